"""Building blocks shared by the model zoo."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Every convolution of the zoo starts from PyTorch's kaiming_normal_(mode='fan_out'), as the
# torchvision / pytorch-classification ResNets and the CIFAR VGG code initialize theirs:
# N(0, 2 / fan_out), fan_out = kernel height * width * output channels. JAX's 'normal' is
# untruncated, like PyTorch's.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# model.init choices (kd_jax/config.py); the first is the default.
MODEL_INITS = ('flax', 'torch')

# PyTorch's default for nn.Linear and nn.Conv2d weights, kaiming_uniform_(a=sqrt(5)):
# U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1 / 3), so
# b = 1 / sqrt(fan_in) and the variance b^2 / 3 = 1 / (3 fan_in): flax's variance_scaling with scale
# 1/3 over fan_in (for a conv kernel (kh, kw, cin, cout), fan_in = kh * kw * cin, as PyTorch's).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  """PyTorch's default bias of nn.Linear / nn.Conv2d: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), where
  fan_in is the layer's (a bias's own shape does not say it)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_init_options(init: str, fan_in: int) -> dict:
  """The kernel_init / bias_init arguments of a Dense or Conv under model.init: {} for 'flax' (the
  layer's own defaults, so existing runs stay bit-identical), PyTorch's defaults for 'torch'."""
  if init not in MODEL_INITS:
    raise ValueError(f'model init {init!r} is not one of {MODEL_INITS}')
  if init == 'flax':
    return {}
  return dict(kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in))
