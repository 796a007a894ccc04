"""The CIFAR ResNets of the distillation benchmark (post-activation, He et al. 2016).

`CifarResNet` is RepDistiller's / mdistiller's `resnet.py`, the original CIFAR ResNet:
* stem: conv3x3 (filters[0]), BatchNorm, ReLU;
* three stages of n = (depth - 2) / 6 basic blocks with filters[1..3] planes, strides 1, 2, 2;
* a block: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut (the identity, or where the shape
  changes a 1x1 strided conv + BN, `downsample`), then ReLU;
* head: global average pool (8x8 for 32x32 input), Linear.
resnet20/32/56/110 have filters (16, 16, 32, 64); resnet8x4 and resnet32x4 (32, 64, 128, 256),
whose first stage starts with a projection because it widens the stem's 32 channels to 64.

`CifarResNet50` is `resnetv2.py`'s ResNet50, torchvision's bottleneck ResNet with a CIFAR stem:
* stem: conv3x3 (64), BatchNorm, ReLU (no max pool);
* four stages of (3, 4, 6, 3) bottleneck blocks with 64, 128, 256, 512 planes, expansion 4, strides
  1, 2, 2, 2 (on the 3x3 conv); the projection shortcut is called `shortcut`;
* head: global average pool (4x4), Linear.

Stage features (32x32 input): the stem output, then each stage's output after its last ReLU
(CifarResNet: 32x32, 16x16, 8x8; CifarResNet50: 32, 16, 8, 4 pixels); the preactivation features are
the last block's sum before that ReLU. Convolutions start from kaiming_normal_(mode='fan_out'), the
classifier from PyTorch's Linear default, as in the references.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.cifar_layers import (conv, global_average, model_outputs, projection_shortcut,
                                        run_layers, torch_default_dense)
from kd_jax.models.preresnet import make_norm

RESNET_FILTERS = (16, 16, 32, 64)
RESNET_X4_FILTERS = (32, 64, 128, 256)
RESNET50_STAGES = (3, 4, 6, 3)
BOTTLENECK_EXPANSION = 4


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut; returns (ReLU of the sum, the sum)."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = conv(self.planes, 3, 'conv1', self.dtype, stride=self.stride, padding=1)(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.norm(name='bn2')(conv(self.planes, 3, 'conv2', self.dtype, padding=1)(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = projection_shortcut(x, self.planes, self.stride, self.norm, 'downsample',
                                     self.dtype)
    preact = y + shortcut
    return nn.relu(preact), preact


class CifarResNet(nn.Module):
  """CIFAR ResNet of basic blocks, depth = 6n + 2; `filters` = (stem, stage 1, stage 2, stage 3)."""
  num_classes: int
  depth: int = 20
  filters: Sequence[int] = RESNET_FILTERS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    n, remainder = divmod(self.depth - 2, 6)
    if remainder or n < 1:
      raise ValueError(f'CIFAR ResNet depth {self.depth} is not 6n+2 for n >= 1')
    norm = make_norm('batch', train, self.dtype)
    x = nn.relu(norm(name='bn1')(conv(self.filters[0], 3, 'conv1', self.dtype, padding=1)(x)))
    layers = [[BasicBlock(planes=self.filters[stage], stride=2 if stage > 1 and i == 0 else 1,
                          norm=norm, dtype=self.dtype, name=f'layer{stage}_{i}') for i in range(n)]
              for stage in (1, 2, 3)]
    x, stages, preacts = run_layers(x, layers)
    pooled = global_average(x)
    logits = torch_default_dense(self.num_classes, pooled.shape[-1], 'fc', self.dtype)(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)


class Bottleneck(nn.Module):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4 planes)-BN + shortcut; returns
  (ReLU of the sum, the sum)."""
  planes: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_channels = self.planes * BOTTLENECK_EXPANSION
    y = nn.relu(self.norm(name='bn1')(conv(self.planes, 1, 'conv1', self.dtype)(x)))
    y = conv(self.planes, 3, 'conv2', self.dtype, stride=self.stride, padding=1)(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.norm(name='bn3')(conv(out_channels, 1, 'conv3', self.dtype)(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = projection_shortcut(x, out_channels, self.stride, self.norm, 'shortcut',
                                     self.dtype)
    preact = y + shortcut
    return nn.relu(preact), preact


class CifarResNet50(nn.Module):
  """ResNet-50 with a 3x3 stride-1 stem for 32x32 images (`stage_sizes` for smaller variants)."""
  num_classes: int
  stage_sizes: Sequence[int] = RESNET50_STAGES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    norm = make_norm('batch', train, self.dtype)
    x = nn.relu(norm(name='bn1')(conv(64, 3, 'conv1', self.dtype, padding=1)(x)))
    layers = [[Bottleneck(planes=64 * 2**(stage - 1), stride=2 if stage > 1 and i == 0 else 1,
                          norm=norm, dtype=self.dtype, name=f'layer{stage}_{i}')
               for i in range(blocks)]
              for stage, blocks in enumerate(self.stage_sizes, start=1)]
    x, stages, preacts = run_layers(x, layers)
    pooled = global_average(x)
    logits = torch_default_dense(self.num_classes, pooled.shape[-1], 'linear', self.dtype)(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)
