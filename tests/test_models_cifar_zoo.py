"""Tests for the CIFAR-100 distillation benchmark's models (kd_jax/models/cifar_zoo.py).

Parameter counts are the PyTorch reference definitions' `sum(p.numel() for p in model.parameters())`
at 100 classes; shapes are those of mdistiller's `feats` for 32x32 images. Both are read from
jax.eval_shape, which traces a model without compiling or running it. The numbers against the
PyTorch models themselves are in tests/test_import_teacher.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PARAMS_AT_100_CLASSES
from kd_jax import config as kd_config
from kd_jax.errors import KdJaxError
from kd_jax.models import MODEL_NAMES, build_model, param_count
from kd_jax.models import cifar_layers


# (height = width, channels) of mdistiller's feats[i] for a 32x32 input, and the pooled width.
RESNET_STAGES = ((32, 16), (32, 16), (16, 32), (8, 64))
RESNET_X4_STAGES = ((32, 32), (32, 64), (16, 128), (8, 256))
WRN_2_STAGES = ((32, 16), (32, 32), (16, 64), (8, 128))
VGG_STAGES = ((32, 64), (16, 128), (8, 256), (4, 512), (4, 512))
STAGE_SHAPES = {
    'resnet8': (RESNET_STAGES, 64), 'resnet20': (RESNET_STAGES, 64), 'resnet32': (RESNET_STAGES, 64),
    'resnet56': (RESNET_STAGES, 64), 'resnet110': (RESNET_STAGES, 64),
    'resnet8x4': (RESNET_X4_STAGES, 256), 'resnet32x4': (RESNET_X4_STAGES, 256),
    'wrn_16_2': (WRN_2_STAGES, 128), 'wrn_40_1': (RESNET_STAGES, 64),
    'wrn_40_2': (WRN_2_STAGES, 128), 'vgg8': (VGG_STAGES, 512), 'vgg13': (VGG_STAGES, 512),
    'MobileNetV2': (((16, 16), (16, 12), (8, 16), (4, 48), (2, 160)), 1280),
    'ShuffleV1': (((32, 24), (16, 240), (8, 480), (4, 960)), 960),
    'ShuffleV2': (((32, 24), (16, 116), (8, 232), (4, 464)), 1024),
    'ResNet50': (((32, 64), (32, 256), (16, 512), (8, 1024), (4, 2048)), 2048),
}
BATCH = 2


def make_model(name, num_classes=100, **fields):
  return build_model(kd_config.model_config(name=name, **fields), num_classes)


def variable_shapes(model):
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))


def test_every_benchmark_model_is_registered():
  assert set(PARAMS_AT_100_CLASSES) <= set(MODEL_NAMES)
  assert 'resnet50' in MODEL_NAMES and 'ResNet50' in MODEL_NAMES  # ImageNet and CIFAR


@pytest.mark.parametrize('name', sorted(PARAMS_AT_100_CLASSES))
def test_parameter_count_and_shapes(name):
  model = make_model(name)
  shapes = variable_shapes(model)
  assert param_count(shapes['params']) == PARAMS_AT_100_CLASSES[name]
  # Running statistics: one mean and one variance per BatchNorm channel.
  bn_scales = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])
               if path[-1].key == 'scale']
  assert param_count(shapes['batch_stats']) == 2 * sum(leaf.size for leaf in bn_scales)

  x = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, x)
  assert logits.shape == (BATCH, 100) and logits.dtype == jnp.float32
  logits, features = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, features=True), shapes, x)
  stages, pooled = STAGE_SHAPES[name]
  expected = [(BATCH, size, size, channels) for size, channels in stages]
  assert [f.shape for f in features.stages] == expected
  assert [f.shape for f in features.preact_stages] == expected
  assert features.pooled.shape == (BATCH, pooled)
  # The sown stages are the stage features after the stem.
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']), shapes, x)
  sown = state['intermediates']
  assert sorted(sown) == [f'stage{i}' for i in range(1, len(stages))]
  assert [sown[f'stage{i}'][0].shape for i in range(1, len(stages))] == expected[1:]


def test_parameter_count_follows_num_classes():
  shapes = variable_shapes(make_model('resnet8x4', num_classes=10))
  assert param_count(shapes['params']) == PARAMS_AT_100_CLASSES['resnet8x4'] - 90 * (256 + 1)


def test_fixed_width_is_enforced():
  with pytest.raises(KdJaxError, match='wrn_40_2 has a fixed width'):
    make_model('wrn_40_2', width=32)


def test_bf16_models_return_float32_logits():
  model = build_model(kd_config.model_config(name='ShuffleV2'), 100, jnp.bfloat16)
  shapes = variable_shapes(model)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((BATCH, 32, 32, 3)), train=False),
                          shapes)
  assert logits.dtype == jnp.float32


def random_variables(shapes, seed=0):
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if path[-1].key == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_features_are_what_the_head_reads():
  """resnet20: pooled = mean of the last stage, logits = its Dense map, stage = ReLU(preact);
  train mode moves the running statistics towards the batch's, as PyTorch's momentum 0.1."""
  model = make_model('resnet20')
  variables = random_variables(variable_shapes(model))
  x = np.random.default_rng(1).standard_normal((BATCH, 32, 32, 3)).astype(np.float32)
  logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False, features=True))(
      variables, x)
  np.testing.assert_allclose(features.pooled, np.mean(features.stages[-1], axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  fc = variables['params']['fc']
  np.testing.assert_allclose(logits, features.pooled @ fc['kernel'] + fc['bias'], rtol=1e-5,
                             atol=1e-5)
  for stage, preact in zip(features.stages[1:], features.preact_stages[1:]):
    np.testing.assert_array_equal(stage, np.maximum(preact, 0))

  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  # The stem's BatchNorm reads conv1's output; its new running mean mixes in that batch mean.
  conv = jax.lax.conv_general_dilated(x, variables['params']['conv1']['kernel'], (1, 1),
                                      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  old = variables['batch_stats']['bn1']['mean']
  np.testing.assert_allclose(updates['batch_stats']['bn1']['mean'],
                             0.9 * old + 0.1 * np.mean(conv, axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_channel_shuffle_matches_pytorch_layout():
  """NumPy transcription of ShuffleNet's NCHW shuffle: view (N, g, C/g, H, W), swap axes 1 and 2."""
  groups, channels = 3, 12
  x = np.random.default_rng(0).standard_normal((2, 4, 5, channels)).astype(np.float32)
  nchw = x.transpose(0, 3, 1, 2)
  shuffled = nchw.reshape(2, groups, channels // groups, 4, 5).transpose(0, 2, 1, 3, 4)
  expected = shuffled.reshape(2, channels, 4, 5).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(cifar_layers.channel_shuffle(x, groups), expected)


def test_torch_default_initializers():
  """kaiming_uniform_(a=sqrt(5)) and Linear's bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  key = jax.random.PRNGKey(0)
  kernel = np.asarray(cifar_layers.torch_default_kernel_init(key, (3, 3, 16, 64)))
  bound = 1 / np.sqrt(3 * 3 * 16)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.03)
  bias = np.asarray(cifar_layers.torch_default_bias_init(256)(key, (5000,)))
  assert np.abs(bias).max() <= 1 / 16 and bias.min() < -0.06 and bias.max() > 0.06


def test_state_dict_keys():
  assert cifar_layers.state_dict_key('params', ('layer1_0', 'downsample_1', 'scale')) == \
      'layer1.0.downsample.1.weight'
  assert cifar_layers.state_dict_key('batch_stats', ('blocks_2_1', 'conv_4', 'var')) == \
      'blocks.2.1.conv.4.running_var'
  assert cifar_layers.state_dict_key('params', ('block1_layer_0', 'convShortcut', 'kernel')) == \
      'block1.layer.0.convShortcut.weight'
