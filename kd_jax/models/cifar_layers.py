"""Pieces shared by the models of the CIFAR-100 distillation benchmark (CRD, RepDistiller,
mdistiller).

The benchmark's models (cifar_resnet.py, wrn.py, cifar_vgg.py, mobilenetv2.py, shufflenet.py) follow
the PyTorch definitions of RepDistiller's `models/` and mdistiller's `mdistiller/models/cifar/`
layer for layer, so that a teacher trained there can be imported (kd_jax/import_teacher.py):

* Names. Every submodule is named after its attribute path in the PyTorch model, with '.' written
  as '_': PyTorch's `layer1.0.conv1` is the flax module `layer1_0` holding `conv1`, and
  `blocks.2.1.conv.3` is `blocks_2_1` holding `conv_3`. No attribute name of those models contains
  '_', so `state_dict_key` recovers the state_dict key of every variable from its path alone.
* Padding is explicit and symmetric, as PyTorch's (a 3x3 stride-2 convolution pads one pixel on
  every side, where 'SAME' would pad only the bottom and right); BatchNorm is PyTorch's
  (momentum 0.1, eps 1e-5: kd_jax.models.preresnet.make_norm).
* Initialization is the references': each model's docstring says which of the initializers below
  its convolutions and classifier use.

`model.apply(variables, x, train=..., features=True)` returns `(logits, StageFeatures)`, the tensors
mdistiller's models return in their `feats` dict; each model's docstring says what its stages are.
Like the other kd_jax models they also sow every stage output (not the stem) as
'intermediates'/'stage{i}'.
"""

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models.layers import conv_init

# PyTorch's default Conv2d / Linear weight init, kaiming_uniform_(a=sqrt(5)): U(-b, b) with
# b = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in), i.e. variance 1 / (3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# The classifiers the VGG and MobileNetV2 code initializes by hand: N(0, 0.01^2), zero bias.
small_normal_init = nn.initializers.normal(0.01)


def torch_default_bias_init(fan_in: int):
  """PyTorch's default Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class StageFeatures(NamedTuple):
  """The features next to the logits (mdistiller's `feats` dict), for feature distillation.

  stages: mdistiller's 'feats': the stem output, then the output of every stage, NHWC.
  preact_stages: mdistiller's 'preact_feats' (the features OFD reads): the same points before the
    ReLU that ends them (the stem output as it is).
  pooled: mdistiller's 'pooled_feat': the globally pooled vector the classifier reads.
  """
  stages: Sequence[jax.Array]
  preact_stages: Sequence[jax.Array]
  pooled: jax.Array


def state_dict_key(collection: str, path: Sequence[str]) -> str:
  """The PyTorch state_dict key of the variable at `path` (module names, then the variable's name)
  in `collection`, following the naming rule of the module docstring.

  Conv and Dense kernels are 'weight', BatchNorm scales 'weight', biases 'bias'; the running
  statistics of 'batch_stats' are 'running_mean' and 'running_var'.
  """
  *modules, leaf = path
  leaf = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight', ('params', 'bias'): 'bias',
          ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}[
              (collection, leaf)]
  return '.'.join([module.replace('_', '.') for module in modules] + [leaf])


def conv(features: int, kernel_size: int, name: str, dtype: Any, stride: int = 1, padding: int = 0,
         groups: int = 1, use_bias: bool = False, kernel_init=conv_init) -> nn.Conv:
  """A square convolution as PyTorch's Conv2d(kernel_size, stride, padding, groups, bias)."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=stride, padding=padding,
                 feature_group_count=groups, use_bias=use_bias, kernel_init=kernel_init,
                 dtype=dtype, name=name)


def torch_default_dense(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
  """A Dense layer initialized as PyTorch's nn.Linear(fan_in, features)."""
  return nn.Dense(features, kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(fan_in), dtype=dtype, name=name)


def projection_shortcut(x, features: int, stride: int, norm, name: str, dtype: Any):
  """nn.Sequential(Conv2d 1x1 (stride, no bias), BatchNorm2d) as `{name}.0` and `{name}.1`."""
  return norm(name=f'{name}_1')(conv(features, 1, f'{name}_0', dtype, stride=stride)(x))


def channel_shuffle(x, groups: int):
  """ShuffleNet's channel shuffle in NHWC: channel g * (C / groups) + j moves to j * groups + g."""
  *spatial, channels = x.shape
  x = x.reshape(*spatial, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*spatial, channels)


def global_average(x):
  """Mean over H and W in float32, so a bf16 model does not lose precision summing positions."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def run_layers(x, layers):
  """Runs `layers` (stages, each a sequence of blocks returning (output, preactivation)) on the stem
  output x; returns (x, stage features, preactivation features): the stem output, then each
  stage's last block output, and the stem output, then that block's preactivation."""
  stages, preacts = [x], [x]
  for blocks in layers:
    for block in blocks:
      x, preact = block(x)
    stages.append(x)
    preacts.append(preact)
  return x, stages, preacts


def model_outputs(module: nn.Module, logits, stages, preact_stages, pooled, features: bool):
  """What a benchmark model returns: float32 logits, or (logits, StageFeatures) for features=True.

  Sows stages[1:] (every stage after the stem) as 'intermediates'/'stage{i}', as the other kd_jax
  models do.
  """
  for i, stage in enumerate(stages[1:], start=1):
    module.sow('intermediates', f'stage{i}', stage)
  logits = logits.astype(jnp.float32)
  if not features:
    return logits
  return logits, StageFeatures(tuple(stages), tuple(preact_stages), pooled)

