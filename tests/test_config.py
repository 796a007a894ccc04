"""kd_jax/config.py: the choices it states are the ones the implementing modules offer."""

from kd_jax import config, ensemble, losses
from kd_jax.data import augment, policy
from kd_jax.models import lenet, vgg


def test_each_choice_list_is_what_its_module_implements():
  assert losses.KD_KINDS == config.KD_LOSSES
  assert ensemble.METHODS == config.ENSEMBLE_METHODS
  assert vgg.VGG_HEADS == config.VGG_HEADS
  assert lenet.LENET_POOLINGS == config.LENET_POOLINGS
  assert tuple(augment.build_ops(None)) == policy.SINGLE_POLICIES
  assert config.default_config().data.pipeline in config.PIPELINES


def test_the_default_config_validates():
  config.validate(config.default_config())
