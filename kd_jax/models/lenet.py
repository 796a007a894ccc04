"""LeNet-5 for 28x28x1 images (MNIST / EMNIST), the paper's model for its LeNet-5 experiments.

conv 6@5x5 'SAME' -> ReLU -> pool 2 -> conv 16@5x5 'VALID' -> ReLU -> pool 2 -> Dense 120 -> ReLU ->
Dense 84 -> ReLU -> Dense num_classes; 61,706 parameters for 10 classes. ReLU replaces the 1998 tanh.
The 2x2 pooling (stride 2) is `pooling`: 'avg' (the paper's original code, gnosis/models/lenet.py, and
closest to the 1998 subsampling) or 'max' (ours, as in many modern re-implementations). How max
pooling is computed is `max_pool_impl`: 'reshape' (`max_pool` below, the default) or 'reduce_window'
(flax's nn.max_pool, what 'reshape' replaced; kept so that benchmarks can time the two against each
other). Both give the same values; their gradients differ only at exact ties (see `max_pool`).

`init` is model.init: 'flax' (ours: the zoo's N(0, 2 / fan_out) convolutions, flax's LeCun-normal
Dense kernels and zero biases) or 'torch' (the original code's, which sets no initialization: PyTorch's
defaults, every weight and bias ~ U(+-1 / sqrt(fan_in)); kd_jax/models/layers.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models.layers import conv_init, torch_init_options


def max_pool(x, window_shape, strides):
  """nn.max_pool (NHWC, 'VALID') computed, for non-overlapping windows, as a reshape and a max.

  The values are nn.max_pool's. The gradient is much cheaper on XLA:CPU, where reduce_window's is a
  select_and_scatter: the LeNet-5 teacher step ran 24 % faster, the distillation step 15 % (see
  docs/performance.md). It equals nn.max_pool's except at exact ties of a window's maximum, where it
  is split equally among the tied inputs instead of going to the first one (after a ReLU, ties at 0
  get no gradient either way).
  """
  (window_h, window_w), (batch, height, width, channels) = window_shape, x.shape
  if tuple(strides) != tuple(window_shape) or height % window_h or width % window_w:
    return nn.max_pool(x, window_shape, strides=strides)
  windows = x.reshape(batch, height // window_h, window_h, width // window_w, window_w, channels)
  return jnp.max(windows, axis=(2, 4))


# Pooling choices; the first is the original code's.
LENET_POOLINGS = ('avg', 'max')
# How pooling='max' is computed (the module docstring); the first is the default.
MAX_POOL_IMPLS = ('reshape', 'reduce_window')
_MAX_POOL = {'reshape': max_pool, 'reduce_window': nn.max_pool}


class LeNet5(nn.Module):
  """LeNet-5; sows 'stage1' (14x14x6) and 'stage2' (5x5x16) after the conv blocks.

  `first_conv_output`, when given, is this network's first convolution already applied to `x` (see
  `members_first_conv`), and the network continues from it.
  """
  num_classes: int
  pooling: str = 'avg'
  dtype: Any = jnp.float32
  max_pool_impl: str = 'reshape'  # one of MAX_POOL_IMPLS; read only with pooling='max'
  param_init: str = 'flax'  # model.init, one of layers.MODEL_INITS (Module.init is flax's)

  @nn.compact
  def __call__(self, x, train: bool = False, first_conv_output=None):
    del train  # No dropout or batch statistics.
    if self.pooling not in LENET_POOLINGS:
      raise ValueError(f'LeNet5 pooling {self.pooling!r} is not one of {LENET_POOLINGS}')
    if self.max_pool_impl not in _MAX_POOL:
      raise ValueError(f'LeNet5 max_pool_impl {self.max_pool_impl!r} is not one of '
                       f'{MAX_POOL_IMPLS}')
    pool = nn.avg_pool if self.pooling == 'avg' else _MAX_POOL[self.max_pool_impl]
    def conv(features, fan_in, **options):
      init = torch_init_options(self.param_init, fan_in) or dict(kernel_init=conv_init)
      return nn.Conv(features, (5, 5), dtype=self.dtype, **init, **options)

    def dense(features, fan_in):
      return nn.Dense(features, dtype=self.dtype, **torch_init_options(self.param_init, fan_in))

    first_conv = conv(6, 25 * x.shape[-1], padding='SAME')
    x = first_conv(x) if first_conv_output is None else first_conv_output
    x = pool(nn.relu(x), (2, 2), strides=(2, 2))
    self.sow('intermediates', 'stage1', x)
    x = conv(16, 25 * x.shape[-1], padding='VALID')(x)
    x = pool(nn.relu(x), (2, 2), strides=(2, 2))
    self.sow('intermediates', 'stage2', x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense(120, x.shape[-1])(x))
    x = nn.relu(dense(84, x.shape[-1])(x))
    x = dense(self.num_classes, x.shape[-1])(x)
    return x.astype(jnp.float32)


def members_first_conv(stacked_params, x, dtype=jnp.float32):
  """(m, B, 28, 28, 6): the first convolution of m stacked LeNet-5s on the SAME images x, as one.

  m convolutions of x with 6 output channels each are one convolution with 6m output channels (the
  kernels concatenated along the output axis, member-major), then split. On XLA:CPU the one wide
  convolution is much faster than m narrow ones over a single input channel (the 3-teacher forward:
  1.1-1.8x faster, docs/performance.md). The values are nn.Conv's (same dtype casts, same padding),
  up to the rounding of a differently blocked convolution.
  """
  kernel, bias = stacked_params['Conv_0']['kernel'], stacked_params['Conv_0']['bias']
  members, kh, kw, cin, cout = kernel.shape
  wide_kernel = jnp.moveaxis(kernel, 0, -2).reshape(kh, kw, cin, members * cout)
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), wide_kernel.astype(dtype), (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = y + bias.reshape(members * cout).astype(dtype)
  return jnp.moveaxis(y.reshape(*y.shape[:-1], members, cout), -2, 0)
