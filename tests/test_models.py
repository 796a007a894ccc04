"""Tests for kd_jax.models: shapes, dtypes, exact parameter counts, normalization state, stage taps.

Parameter counts are checked against closed-form formulas written here from the architecture
descriptions, not derived from the model code, and against hand-computed totals.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import config as kd_config
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model, param_count, preresnet

# (config, input shape) for every model at its default width; small batches keep the test fast.
MODEL_CASES = {
    'preresnet20': (dict(name='preresnet', depth=20), (2, 32, 32, 3)),
    'preresnet20_layer': (dict(name='preresnet', depth=20, norm='layer'), (2, 32, 32, 3)),
    'lenet5': (dict(name='lenet5'), (2, 28, 28, 1)),
    'vgg16': (dict(name='vgg16'), (2, 32, 32, 3)),
    'vgg16_linear': (dict(name='vgg16', head='linear'), (2, 32, 32, 3)),
    'lenet5_max': (dict(name='lenet5', pooling='max'), (2, 28, 28, 1)),
    'digits_cnn': (dict(name='digits_cnn'), (2, 8, 8, 1)),
    'mlp': (dict(name='mlp'), (2, 8, 8, 1)),
}
BATCHNORM_CASES = ('preresnet20',)


def make_cfg(**fields):
  """A model config as experiments make them: model_config()'s defaults with `fields` changed."""
  return kd_config.model_config(**fields)


def random_input(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def init(model, shape):
  return model.init(jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32), train=False)


def init_shapes(model, shape):
  """Variable shapes without running the initializers (cheap for large models)."""
  return jax.eval_shape(lambda: init(model, shape))


def numpy_variables(model, shape, seed=0):
  """Random variables with the model's structure, drawn with numpy.

  Running the real initializers costs about a second of XLA compilation per distinct parameter
  shape on this CPU, too slow for every test; the real initializers are tested separately. Scales,
  biases and running statistics are perturbed away from their trivial values so that they matter.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, init_shapes(model, shape))


@functools.lru_cache(maxsize=None)
def built_case(case, num_classes=10):
  """(model, variables) for MODEL_CASES[case], shared across tests.

  Apply runs eagerly on purpose: compiling a whole ResNet with XLA takes several seconds on 2 CPU
  cores, while eager ops are compiled once per shape and reused by every later test.
  """
  cfg_fields, shape = MODEL_CASES[case]
  model = build_model(make_cfg(**cfg_fields), num_classes)
  return model, numpy_variables(model, shape)


# --- Independent parameter-count formulas -------------------------------------------------------

def conv_params(kernel, c_in, c_out, bias=False):
  return kernel * kernel * c_in * c_out + (c_out if bias else 0)


def dense_params(c_in, c_out):
  return c_in * c_out + c_out


def norm_params(channels):
  return 2 * channels  # scale and bias


def preresnet_formula(depth, bottleneck, num_classes, width=16):
  """Counts for the pre-activation ResNet of the pytorch-classification code."""
  expansion = 4 if bottleneck else 1
  n = (depth - 2) // (9 if bottleneck else 6)
  total = conv_params(3, 3, width)
  c_in = width
  for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
    for i in range(n):
      c_out = planes * expansion
      if bottleneck:
        total += (norm_params(c_in) + conv_params(1, c_in, planes) + norm_params(planes)
                  + conv_params(3, planes, planes) + norm_params(planes)
                  + conv_params(1, planes, c_out))
      else:
        total += (norm_params(c_in) + conv_params(3, c_in, planes) + norm_params(planes)
                  + conv_params(3, planes, planes))
      if (i == 0 and stride != 1) or c_in != c_out:
        total += conv_params(1, c_in, c_out)  # projection shortcut
      c_in = c_out
  return total + norm_params(c_in) + dense_params(c_in, num_classes)


def lenet5_formula(num_classes):
  return (conv_params(5, 1, 6, bias=True) + conv_params(5, 6, 16, bias=True)
          + dense_params(5 * 5 * 16, 120) + dense_params(120, 84) + dense_params(84, num_classes))


def vgg16_formula(num_classes, head='dropout_mlp'):
  channels = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  total, c_in = 0, 3
  for c_out in channels:
    total += conv_params(3, c_in, c_out, bias=True)
    c_in = c_out
  if head == 'dropout_mlp':  # the original's Linear(512, 512) twice (dropout has no parameters)
    total += 2 * dense_params(512, 512)
  return total + dense_params(512, num_classes)


@pytest.mark.parametrize('cfg_fields, num_classes, formula, exact', [
    (dict(name='preresnet', depth=20, block='basic'), 10, preresnet_formula(20, False, 10),
     272_282),
    (dict(name='preresnet', depth=20), 10, preresnet_formula(20, False, 10), 272_282),
    (dict(name='preresnet', depth=20, norm='layer'), 10, preresnet_formula(20, False, 10),
     272_282),
    (dict(name='preresnet', depth=56), 100, preresnet_formula(56, True, 100), 613_556),
    (dict(name='preresnet', depth=56, block='bottleneck'), 100, preresnet_formula(56, True, 100),
     613_556),
    (dict(name='lenet5'), 10, lenet5_formula(10), 61_706),
    (dict(name='lenet5', pooling='max'), 10, lenet5_formula(10), 61_706),
    (dict(name='vgg16', head='linear'), 10, vgg16_formula(10, 'linear'), 14_719_818),
    (dict(name='vgg16', head='linear'), 100, vgg16_formula(100, 'linear'), 14_765_988),
    # The original's VGG-16: 15.29 M parameters at 100 classes (the paper's CIFAR-100 setting).
    (dict(name='vgg16'), 100, vgg16_formula(100), 15_291_300),
    (dict(name='vgg16'), 10, vgg16_formula(10), 15_245_130),
])
def test_param_counts_match_formulas(cfg_fields, num_classes, formula, exact):
  assert formula == exact  # the formula agrees with the hand-computed total
  model = build_model(make_cfg(**cfg_fields), num_classes)
  shape = (1, 28, 28, 1) if cfg_fields['name'] == 'lenet5' else (1, 32, 32, 3)
  assert param_count(init_shapes(model, shape)['params']) == exact


def test_preresnet56_auto_is_bottleneck_with_width_256():
  model = build_model(make_cfg(name='preresnet', depth=56), 100)
  assert model.block == 'bottleneck'
  params = init_shapes(model, (1, 32, 32, 3))['params']
  dense = [v for k, v in params.items() if k.startswith('Dense')]
  assert len(dense) == 1 and dense[0]['kernel'].shape == (256, 100)
  # 56 = 6n+2 too, but 'auto' follows the original code's depth >= 44 switch.
  basic = build_model(make_cfg(name='preresnet', depth=56, block='basic'), 100)
  assert param_count(init_shapes(basic, (1, 32, 32, 3))['params']) == preresnet_formula(
      56, False, 100)


def test_width_scales_preresnet():
  model = build_model(make_cfg(name='preresnet', depth=20, width=32), 10)
  params = init_shapes(model, (1, 32, 32, 3))['params']
  assert param_count(params) == preresnet_formula(20, False, 10, width=32)


@pytest.mark.parametrize('case', sorted(MODEL_CASES))
def test_output_shape_and_float32_logits(case):
  _, shape = MODEL_CASES[case]
  model, variables = built_case(case, 7)
  x = random_input(shape)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (shape[0], 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  logits_train, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                rngs={'dropout': jax.random.PRNGKey(1)})
  assert logits_train.shape == (shape[0], 7) and logits_train.dtype == jnp.float32


@pytest.mark.parametrize('case', sorted(MODEL_CASES))
def test_bfloat16_compute_keeps_float32_params_and_logits(case):
  # Shapes and dtypes only (eval_shape), so every model is covered without compiling it again.
  cfg_fields, shape = MODEL_CASES[case]
  model = build_model(make_cfg(**cfg_fields), 7, dtype=jnp.bfloat16)
  variables = init_shapes(model, shape)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32  # parameters and batch stats stay float32
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (shape[0], 7) and logits.dtype == jnp.float32
  (stage1,) = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']), variables,
      x)[1]['intermediates']['stage1']
  assert stage1.dtype == jnp.bfloat16  # the compute itself does run in bf16


def test_bfloat16_preresnet_matches_float32():
  model32, variables = built_case('preresnet20', 7)
  model16 = build_model(make_cfg(**MODEL_CASES['preresnet20'][0]), 7, dtype=jnp.bfloat16)
  x = random_input(MODEL_CASES['preresnet20'][1])
  logits32 = model32.apply(variables, x, train=False)
  logits16 = model16.apply(variables, x, train=False)  # same float32 variables
  assert logits16.dtype == jnp.float32 and np.all(np.isfinite(logits16))
  np.testing.assert_allclose(logits16, logits32, rtol=0.1, atol=0.1)


@pytest.mark.parametrize('case', sorted(MODEL_CASES))
def test_batch_stats_only_for_batchnorm_models(case):
  cfg_fields, shape = MODEL_CASES[case]
  variables = init_shapes(build_model(make_cfg(**cfg_fields), 10), shape)
  assert ('batch_stats' in variables) == (case in BATCHNORM_CASES)
  assert set(variables) <= {'params', 'batch_stats'}


# Every variable of a depth-8, width-4 PreResNet (3 classes, 3 input channels), as the hand-written
# BatchNorm it had before they were created: checkpoints written then must still load.
PRERESNET8_VARIABLES = {
    'batch_stats/BatchNorm_0/mean': (16,), 'batch_stats/BatchNorm_0/var': (16,),
    'params/BatchNorm_0/bias': (16,), 'params/BatchNorm_0/scale': (16,),
    'params/Conv_0/kernel': (3, 3, 3, 4),
    'params/Dense_0/bias': (3,), 'params/Dense_0/kernel': (16, 3),
}
for _block, (_in, _planes) in enumerate(((4, 4), (4, 8), (8, 16))):
  for _norm, _channels in (('BatchNorm_0', _in), ('BatchNorm_1', _planes)):
    PRERESNET8_VARIABLES.update({
        f'batch_stats/PreActBasicBlock_{_block}/{_norm}/{name}': (_channels,)
        for name in ('mean', 'var')})
    PRERESNET8_VARIABLES.update({
        f'params/PreActBasicBlock_{_block}/{_norm}/{name}': (_channels,)
        for name in ('bias', 'scale')})
  PRERESNET8_VARIABLES[f'params/PreActBasicBlock_{_block}/Conv_0/kernel'] = (3, 3, _in, _planes)
  PRERESNET8_VARIABLES[f'params/PreActBasicBlock_{_block}/Conv_1/kernel'] = (3, 3, _planes, _planes)
  if _in != _planes:
    PRERESNET8_VARIABLES[f'params/PreActBasicBlock_{_block}/Conv_2/kernel'] = (1, 1, _in, _planes)


def test_preresnet_variable_tree_is_unchanged():
  variables = init_shapes(build_model(make_cfg(name='preresnet', depth=8, width=4), 3),
                          (1, 32, 32, 3))
  got = {'/'.join(key.key for key in path): leaf.shape
         for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
  assert got == PRERESNET8_VARIABLES
  assert len(got) == 39


def test_batchnorm_matches_numpy():
  """PreResNet's BatchNorm against a NumPy transcription of PyTorch's BatchNorm2d (momentum 0.1).

  Train mode: y = (x - mean_B) / sqrt(var_B + 1e-5) * scale + bias with the biased batch variance,
  running mean/var <- 0.9 * running + 0.1 * batch statistic (flax stores the biased variance).
  Eval mode normalizes with the running statistics.
  """
  x = random_input((6, 4, 4, 5)) * 3 + 1
  rng = np.random.default_rng(1)
  variables = {'params': {'scale': rng.uniform(0.5, 2, 5).astype(np.float32),
                          'bias': rng.standard_normal(5).astype(np.float32)},
               'batch_stats': {'mean': rng.standard_normal(5).astype(np.float32),
                               'var': rng.uniform(0.5, 2, 5).astype(np.float32)}}
  params, stats = variables['params'], variables['batch_stats']
  x64 = x.astype(np.float64)
  mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))

  def normalize(mean, var):
    return (x64 - mean) / np.sqrt(var + 1e-5) * params['scale'] + params['bias']

  y, updates = preresnet.make_norm('batch', True, jnp.float32)().apply(
      variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, normalize(mean, var), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.9 * stats['mean'] + 0.1 * mean,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 * stats['var'] + 0.1 * var,
                             rtol=1e-5, atol=1e-6)

  y_eval = preresnet.make_norm('batch', False, jnp.float32)().apply(variables, x)
  np.testing.assert_allclose(y_eval, normalize(stats['mean'], stats['var']), rtol=1e-5, atol=1e-5)


def test_train_updates_batch_stats_and_eval_is_stateless():
  model, variables = built_case('preresnet20', 7)
  x = random_input(MODEL_CASES['preresnet20'][1])
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                                   updates['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))
  # Eval mode reads the running stats and leaves them alone: same outputs call after call.
  new_variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  first = model.apply(new_variables, x, train=False)
  second, unchanged = model.apply(new_variables, x, train=False, mutable=['batch_stats'])
  np.testing.assert_array_equal(first, second)
  jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged['batch_stats'],
                         updates['batch_stats'])


@pytest.mark.parametrize('case', sorted(MODEL_CASES))
def test_eval_output_does_not_depend_on_rest_of_batch(case):
  _, shape = MODEL_CASES[case]
  model, variables = built_case(case, 7)
  batch = random_input(shape, seed=1)
  full = model.apply(variables, batch, train=False)
  alone = model.apply(variables, batch[:1], train=False)
  np.testing.assert_allclose(full[:1], alone, rtol=1e-4, atol=1e-5)


def test_layernorm_preresnet_is_batch_independent_in_training_too():
  model, variables = built_case('preresnet20_layer', 7)
  batch = random_input(MODEL_CASES['preresnet20_layer'][1], seed=2)
  full = model.apply(variables, batch, train=True)
  alone = model.apply(variables, batch[:1], train=True)
  np.testing.assert_allclose(full[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cfg_fields, shape, expected', [
    (dict(name='preresnet', depth=20), (2, 32, 32, 3),
     [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
    (dict(name='preresnet', depth=20, norm='layer'), (2, 32, 32, 3),
     [(32, 32, 16), (16, 16, 32), (8, 8, 64)]),
    (dict(name='preresnet', depth=56), (2, 32, 32, 3),
     [(32, 32, 64), (16, 16, 128), (8, 8, 256)]),
    (dict(name='lenet5'), (2, 28, 28, 1), [(14, 14, 6), (5, 5, 16)]),
    (dict(name='vgg16'), (2, 32, 32, 3),
     [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 512)]),
    (dict(name='digits_cnn'), (2, 8, 8, 1), [(8, 8, 32), (4, 4, 64), (128,)]),
    (dict(name='mlp', width=64), (2, 8, 8, 1), [(64,), (64,)]),
])
def test_intermediates_hold_each_stage(cfg_fields, shape, expected):
  model = build_model(make_cfg(**cfg_fields), 10)
  variables = init_shapes(model, shape)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']), variables,
      jax.ShapeDtypeStruct(shape, jnp.float32))
  stages = state['intermediates']
  assert sorted(stages) == [f'stage{i}' for i in range(1, len(expected) + 1)]
  for i, per_example_shape in enumerate(expected, start=1):
    (activation,) = stages[f'stage{i}']  # sow stores a one-element tuple
    assert activation.shape == (shape[0],) + per_example_shape


@pytest.mark.parametrize('cfg_fields, fragments', [
    (dict(name='preresnet', depth=21), ['depth 21', '6n+2', '9n+2']),
    (dict(name='preresnet', depth=29, block='basic'), ['depth 29', '6n+2']),
    (dict(name='preresnet', depth=44), ["'auto'", 'bottleneck']),  # 44 = 6n+2 but auto -> 9n+2
    (dict(name='preresnet', depth=2, block='basic'), ['depth 2']),
    (dict(name='preresnet', depth=20, block='wide'), ['basic', 'bottleneck']),
    (dict(name='preresnet', depth=20, norm='group'), ['batch', 'layer']),
    (dict(name='resnet'), ['preresnet', 'lenet5', 'vgg16', 'digits_cnn', 'mlp']),
    (dict(name='mlp', width=-3), ['width']),
    (dict(name='lenet5', width=12), ['width']),
    (dict(name='lenet5', pooling='sum'), ['pooling', "'sum'", 'avg', 'max']),
    (dict(name='vgg16', head='mlp'), ['head', "'mlp'", 'dropout_mlp', 'linear']),
])
def test_bad_config_raises_one_line_error(cfg_fields, fragments):
  with pytest.raises(KdJaxError) as error:
    build_model(make_cfg(**cfg_fields), 10)
  message = str(error.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message


def test_valid_depths_build():
  for depth, block in ((44, 'basic'), (110, 'auto'), (29, 'bottleneck'), (32, 'auto')):
    build_model(make_cfg(name='preresnet', depth=depth, block=block), 10)


@functools.lru_cache(maxsize=None)
def digits_cnn_initialized():
  """DigitsCNN with its real initial parameters (jitted: for a net this small XLA compiles fast)."""
  model = build_model(make_cfg(name='digits_cnn'), 10)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1), jnp.float32))['params']
  return model, params


def test_conv_init_is_kaiming_normal_fan_out():
  _, params = digits_cnn_initialized()
  kernel = np.asarray(params['Conv_1']['kernel'])  # (3, 3, 32, 64): 18,432 samples
  fan_out = 3 * 3 * 64
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / fan_out), rtol=0.05)
  assert abs(kernel.mean()) < 0.005
  np.testing.assert_array_equal(params['Conv_1']['bias'], 0.0)


def test_digits_cnn_learns_sklearn_digits():
  datasets = pytest.importorskip('sklearn.datasets')
  digits = datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0
  images = (images - images.mean()) / images.std()
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:1400], order[1400:]

  model, params = digits_cnn_initialized()
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({'params': p}, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(1)
  for _ in range(200):
    idx = rng.choice(train, 64, replace=False)
    params, opt_state = step(params, opt_state, images[idx], labels[idx])
  logits = model.apply({'params': params}, images[test], train=False)
  accuracy = float(np.mean(np.argmax(logits, -1) == labels[test]))
  assert accuracy > 0.9, accuracy


# --- Options that reproduce the original code (gnosis/models/lenet.py, vgg.py) -----------------


def test_lenet5_defaults_to_the_originals_average_pooling():
  assert build_model(make_cfg(name='lenet5'), 10).pooling == 'avg'
  x = random_input((2, 28, 28, 1), seed=3)
  avg_model, variables = built_case('lenet5', 7)
  max_model, _ = built_case('lenet5_max', 7)
  (stage1,) = avg_model.apply(variables, x, train=False, mutable=['intermediates'])[1][
      'intermediates']['stage1']
  # Independent recomputation of stage 1: conv (pad 2) + ReLU, then the mean of each 2x2 block.
  kernel = np.asarray(variables['params']['Conv_0']['kernel'], np.float64)  # (5, 5, 1, 6)
  bias = np.asarray(variables['params']['Conv_0']['bias'], np.float64)
  padded = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
  conv = np.zeros((2, 28, 28, 6))
  for i in range(5):
    for j in range(5):
      conv += padded[:, i:i + 28, j:j + 28, :1] * kernel[i, j, 0]
  relu = np.maximum(conv + bias, 0.0)
  expected = relu.reshape(2, 14, 2, 14, 2, 6).mean(axis=(2, 4))
  np.testing.assert_allclose(stage1, expected, rtol=1e-4, atol=1e-5)
  # Same parameters, max pooling: a different network function.
  assert not np.allclose(avg_model.apply(variables, x, train=False),
                         max_model.apply(variables, x, train=False))


def test_vgg16_defaults_to_the_originals_dropout_head():
  model, variables = built_case('vgg16', 7)
  assert model.head == 'dropout_mlp'
  dense = variables['params']
  assert [dense[f'Dense_{i}']['kernel'].shape for i in range(3)] == [(512, 512), (512, 512),
                                                                    (512, 7)]
  x = random_input((2, 32, 32, 3), seed=4)
  # Eval mode: no dropout, deterministic, and equal to the head computed by hand in NumPy.
  (features,) = model.apply(variables, x, train=False, mutable=['intermediates'])[1][
      'intermediates']['stage5']
  h = np.asarray(features, np.float64).reshape(2, -1)
  for i in range(2):
    h = np.maximum(h @ np.asarray(dense[f'Dense_{i}']['kernel'], np.float64)
                   + np.asarray(dense[f'Dense_{i}']['bias'], np.float64), 0.0)
  expected = h @ np.asarray(dense['Dense_2']['kernel'], np.float64) + np.asarray(
      dense['Dense_2']['bias'], np.float64)
  np.testing.assert_allclose(model.apply(variables, x, train=False), expected, rtol=1e-4, atol=1e-4)


def test_vgg16_dropout_is_random_in_training_only_and_needs_a_key():
  model, variables = built_case('vgg16', 7)
  x = random_input((2, 32, 32, 3), seed=5)
  train = lambda seed: np.asarray(model.apply(variables, x, train=True,
                                              rngs={'dropout': jax.random.PRNGKey(seed)}))
  np.testing.assert_array_equal(train(0), train(0))  # a key fixes the masks
  assert not np.allclose(train(0), train(1))
  assert not np.allclose(train(0), model.apply(variables, x, train=False))
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, x, train=True)
  # The 'linear' head (ours) has no dropout: train and eval agree and no key is needed.
  linear, linear_variables = built_case('vgg16_linear', 7)
  np.testing.assert_allclose(linear.apply(linear_variables, x, train=True),
                             linear.apply(linear_variables, x, train=False), rtol=1e-6)


@pytest.mark.parametrize("pooling,dtype", [("avg", jnp.float32), ("max", jnp.float32),
                                           ("avg", jnp.bfloat16)])
def test_lenet5_ensemble_with_one_wide_first_convolution_equals_members_run_whole(pooling, dtype):
  from kd_jax import ensemble  # pylint: disable=import-outside-toplevel
  from kd_jax.models import lenet  # pylint: disable=import-outside-toplevel
  model = build_model(kd_config.model_config(name="lenet5", pooling=pooling), 10, dtype)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  members = [model.init(jax.random.PRNGKey(i), x[:1]) for i in range(3)]
  stacked = ensemble.stack(members)
  # Independent reference: each member's own nn.Conv, and each member's whole network.
  first = lenet.members_first_conv(stacked["params"], x, dtype)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for i, variables in enumerate(members):
    _, captured = model.apply(variables, x, capture_intermediates=True)
    np.testing.assert_allclose(np.asarray(first[i], np.float32),
                               np.asarray(captured["intermediates"]["Conv_0"]["__call__"][0],
                                          np.float32), atol=tolerance, rtol=tolerance)
  whole = np.stack([np.asarray(model.apply(v, x)) for v in members])
  for method in ("unroll", "vmap", "scan"):
    np.testing.assert_allclose(np.asarray(ensemble.member_logits(model, stacked, x, method)),
                               whole, atol=tolerance, rtol=tolerance)


def test_resnet50_has_torchvisions_parameter_count():
  from kd_jax.models import build_model, param_count
  model = build_model(kd_config.model_config(name="resnet50"), 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3)),
                                                train=False))
  assert param_count(variables["params"]) == 25_557_032
  # 53 BatchNorm layers (stem, 3 per block, 4 projection shortcuts), each with a mean and a variance.
  assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * 53
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables,
      jax.ShapeDtypeStruct((2, 224, 224, 3), np.float32))
  assert [state["intermediates"][f"stage{i}"][0].shape for i in (1, 2, 3, 4)] == [
      (2, 56, 56, 256), (2, 28, 28, 512), (2, 14, 14, 1024), (2, 7, 7, 2048)]
