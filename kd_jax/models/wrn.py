"""Wide ResNets (Zagoruyko & Komodakis 2016) as the distillation benchmark defines them (wrn.py of
RepDistiller / mdistiller): wrn_16_2, wrn_40_1, wrn_40_2 are WRN-depth-k.

Pre-activation network, no dropout (the benchmark's dropRate is 0):
* stem: conv3x3 (16), nothing else;
* three stages (`block1..3`, each an nn.Sequential called `layer`) of n = (depth - 4) / 6 blocks
  with 16k, 32k, 64k planes, strides 1, 2, 2;
* a block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the input when its width is the block's;
  otherwise a 1x1 strided conv of the *pre-activated* input (`convShortcut`) - the reference code
  replaces x by ReLU(BN(x)) in that case, so both branches read it;
* head: BN, ReLU, global average pool (8x8), Linear.

Stage features (32x32 input): the stem output (32x32x16), then the three stage outputs (32x32,
16x16, 8x8: residual sums, no ReLU in a pre-activation net). Their preactivation features are
mdistiller's: each stage output after the BatchNorm that precedes the next ReLU (the next stage's
first `bn1`, the head's `bn1` for the last). Convolutions start from N(0, 2 / fan_out), the
classifier from PyTorch's Linear default weight with a zero bias, as in the reference.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.cifar_layers import (conv, global_average, model_outputs,
                                        torch_default_kernel_init)
from kd_jax.models.preresnet import make_norm


class WideBasicBlock(nn.Module):
  """Returns (block output, BN(x)): the BatchNorm of the input is a preactivation feature."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    normalized = self.norm(name='bn1')(x)
    activated = nn.relu(normalized)
    y = conv(self.planes, 3, 'conv1', self.dtype, stride=self.stride, padding=1)(activated)
    y = nn.relu(self.norm(name='bn2')(y))
    y = conv(self.planes, 3, 'conv2', self.dtype, padding=1)(y)
    if x.shape[-1] == self.planes:
      shortcut = x
    else:
      shortcut = conv(self.planes, 1, 'convShortcut', self.dtype, stride=self.stride)(activated)
    return shortcut + y, normalized


class WideResNet(nn.Module):
  """WRN-depth-widen_factor for 32x32 images; depth = 6n + 4."""
  num_classes: int
  depth: int = 16
  widen_factor: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    n, remainder = divmod(self.depth - 4, 6)
    if remainder or n < 1:
      raise ValueError(f'Wide ResNet depth {self.depth} is not 6n+4 for n >= 1')
    norm = make_norm('batch', train, self.dtype)
    x = conv(16, 3, 'conv1', self.dtype, padding=1)(x)
    stages, preacts = [x], [x]
    for stage, multiplier in ((1, 1), (2, 2), (3, 4)):
      for i in range(n):
        x, normalized_input = WideBasicBlock(
            planes=16 * multiplier * self.widen_factor, stride=2 if stage > 1 and i == 0 else 1,
            norm=norm, dtype=self.dtype, name=f'block{stage}_layer_{i}')(x)
        if stage > 1 and i == 0:
          preacts.append(normalized_input)  # the previous stage's output after this bn1
      stages.append(x)
    normalized = norm(name='bn1')(x)
    preacts.append(normalized)
    pooled = global_average(nn.relu(normalized))
    logits = nn.Dense(self.num_classes, kernel_init=torch_default_kernel_init, dtype=self.dtype,
                      name='fc')(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)
