"""kd_jax/config.py: the choices it states are the ones the implementing modules offer; validation
of the OOD modes and of profile_steps."""

import pytest

from conftest import tiny_config
from kd_jax import config, ensemble, losses
from kd_jax import config as kd_config
from kd_jax import augment_policies as policy
from kd_jax.data import augment, text
from kd_jax.models import cifar_zoo, lenet, vgg


def test_each_choice_list_is_what_its_module_implements():
  assert losses.KD_KINDS == config.KD_LOSSES
  assert ensemble.METHODS == config.ENSEMBLE_METHODS
  assert vgg.VGG_HEADS == config.VGG_HEADS
  assert lenet.LENET_POOLINGS == config.LENET_POOLINGS
  assert text.SOURCES == config.TEXT_SOURCES
  assert tuple(augment.build_ops(None)) == policy.SINGLE_POLICIES
  assert config.default_config().data.pipeline in config.PIPELINES
  assert cifar_zoo.CIFAR_MODEL_NAMES == config.CIFAR_ZOO_MODELS


def test_the_default_config_validates():
  config.validate(config.default_config())


def test_replace_mode_needs_a_ratio_and_append_mode_refuses_one():
  config = tiny_config()
  config.distill.ood_data = kd_config.data_config(name="digits", source="digits")
  config.distill.ood_ratio = 0.2
  with pytest.raises(Exception, match="ood_mode='replace'"):
    kd_config.validate(config)
  config.distill.ood_mode = "replace"
  kd_config.validate(config)
  config.distill.ood_ratio = 0.0
  with pytest.raises(Exception, match="ood_ratio in"):
    kd_config.validate(config)


def test_negative_profile_steps_are_refused():
  config = kd_config.default_config()
  config.profile_steps = -1
  with pytest.raises(Exception, match="profile_steps"):
    kd_config.validate(config)
