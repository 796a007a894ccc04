"""Pre-activation ResNet for 32x32 CIFAR images (He et al. 2016, "Identity Mappings").

Follows the `preresnet.py` of the "pytorch-classification" code the paper's experiments build on:

* stem: one 3x3 conv (no norm/ReLU; the first block's pre-activation provides them);
* three stages of `n` blocks with `width`, 2*`width`, 4*`width` planes and strides 1, 2, 2;
* basic blocks (depth = 6n+2) or bottleneck blocks with expansion 4 (depth = 9n+2);
* the shortcut is a 1x1 strided conv applied to the raw block input whenever the shape changes (no
  norm on it), otherwise the identity;
* head: norm, ReLU, global average pool, dense layer.

`norm='layer'` swaps every BatchNorm for a LayerNorm over (H, W, C) of each example (learnable
per-channel scale and bias), the batch-independent "LayerNorm ResNet" of the paper's optimization
study; such a model has no 'batch_stats' collection.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import conv_init, torch_init_options


BASIC_EXPANSION = 1
BOTTLENECK_EXPANSION = 4


def make_norm(norm: str, train: bool, dtype: Any) -> Callable[..., nn.Module]:
  """Returns a constructor for the normalization layer `norm` ('batch' or 'layer')."""
  if norm == 'batch':
    # momentum 0.9 / epsilon 1e-5 are the flax spellings of PyTorch's BatchNorm2d defaults.
    # flax.linen.BatchNorm, not a hand-written one: a custom-VJP version was within noise of it
    # end to end (docs/performance.md) and was removed.
    return functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  if norm == 'layer':
    return functools.partial(
        nn.LayerNorm, epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=-1, dtype=dtype)
  raise ValueError(f'unknown norm {norm!r}')


class PreActBasicBlock(nn.Module):
  """norm-ReLU-conv3x3(stride)-norm-ReLU-conv3x3, plus the (possibly projected) input."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    out_channels = self.planes * BASIC_EXPANSION
    y = nn.relu(self.norm()(x))
    y = conv(self.planes, (3, 3), strides=self.stride, padding=1)(y)
    y = nn.relu(self.norm()(y))
    y = conv(out_channels, (3, 3), padding=1)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      # The original code projects the raw input x, not the pre-activated one.
      shortcut = conv(out_channels, (1, 1), strides=self.stride, padding=0)(x)
    return y + shortcut


class PreActBottleneck(nn.Module):
  """norm-ReLU-conv1x1-norm-ReLU-conv3x3(stride)-norm-ReLU-conv1x1(4*planes), plus the input."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    out_channels = self.planes * BOTTLENECK_EXPANSION
    y = nn.relu(self.norm()(x))
    y = conv(self.planes, (1, 1), padding=0)(y)
    y = nn.relu(self.norm()(y))
    y = conv(self.planes, (3, 3), strides=self.stride, padding=1)(y)
    y = nn.relu(self.norm()(y))
    y = conv(out_channels, (1, 1), padding=0)(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = conv(out_channels, (1, 1), strides=self.stride, padding=0)(x)
    return y + shortcut


def blocks_per_stage(depth: int, block: str) -> int:
  """n for depth = 6n+2 (basic) or 9n+2 (bottleneck); ValueError if `depth` has no such n >= 1."""
  layers_per_block = {'basic': 6, 'bottleneck': 9}[block]
  n, remainder = divmod(depth - 2, layers_per_block)
  if remainder or n < 1:
    raise ValueError(f'depth {depth} is not {layers_per_block}n+2 for n >= 1')
  return n


class PreResNet(nn.Module):
  """CIFAR pre-activation ResNet; `block` is 'basic' or 'bottleneck' ('auto' is resolved earlier).

  Sows 'stage1'..'stage3' (32x32, 16x16, 8x8 for 32x32 input) before the final norm-ReLU.
  """
  num_classes: int
  depth: int = 20
  block: str = 'basic'
  width: int = 16
  norm: str = 'batch'
  dtype: Any = jnp.float32
  # model.init (layers.MODEL_INITS): 'torch' gives the output layer PyTorch's default (the original
  # sets none there); the convolutions keep the original's explicit N(0, 2 / fan_out) either way.
  param_init: str = 'flax'  # (Module.init is flax's method)

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = blocks_per_stage(self.depth, self.block)
    block_cls = PreActBasicBlock if self.block == 'basic' else PreActBottleneck
    norm = make_norm(self.norm, train, self.dtype)

    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype)(x)
    for stage, (multiplier, stride) in enumerate(((1, 1), (2, 2), (4, 2)), start=1):
      for i in range(n):
        x = block_cls(planes=self.width * multiplier, stride=stride if i == 0 else 1, norm=norm,
                      dtype=self.dtype)(x)
      self.sow('intermediates', f'stage{stage}', x)

    x = nn.relu(norm()(x))
    # Pool in float32 so a bf16 model does not lose precision summing the 8x8 positions.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 **torch_init_options(self.param_init, x.shape[-1]))(x)
    return x.astype(jnp.float32)
