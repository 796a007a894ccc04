"""The CIFAR ShuffleNets of the distillation benchmark (ShuffleNetv1.py / ShuffleNetv2.py of
RepDistiller / mdistiller): 'ShuffleV1' (groups 3) and 'ShuffleV2' (net size 1).

Both start with a 1x1 conv to 24 channels, BN and ReLU at full resolution (no stride, no max pool),
run three stages that each halve the resolution once (32 -> 16 -> 8 -> 4), average the 4x4 map
and end in one Linear layer (`linear`).

ShuffleNetV1 (Zhang et al. 2018), stages of 4, 8, 4 bottlenecks with 240, 480, 960 output channels:
* a bottleneck: grouped conv1x1 to out / 4 channels (groups 1 when it reads the 24-channel stem,
  else 3), BN, ReLU, channel shuffle, depthwise conv3x3(stride), BN, ReLU, grouped conv1x1 (3
  groups), BN; then ReLU of the sum with the input (stride 1) or of the concatenation with a
  3x3/2 average pool of the input (stride 2, the first block of a stage, whose convolutions
  produce only out - in channels).
ShuffleNetV2 (Ma et al. 2018), stages of a down-sampling block and 3, 7, 3 basic blocks with 116,
232, 464 channels, then conv1x1 to 1024, BN, ReLU (`conv2`, `bn2`) before the pool:
* a down-sampling block: [depthwise conv3x3/2, BN, conv1x1, BN, ReLU] on one branch and [conv1x1,
  BN, ReLU, depthwise conv3x3/2, BN, conv1x1, BN, ReLU] on the other, each to half the output
  channels, concatenated and shuffled (2 groups);
* a basic block: split the channels in halves, keep the first, run conv1x1-BN-ReLU-depthwise
  conv3x3-BN-conv1x1-BN-ReLU on the second, concatenate (kept half first), shuffle.

Stage features (32x32 input): the stem output (32x32x24), then each stage's output: V1 16x16x240,
8x8x480, 4x4x960; V2 16x16x116, 8x8x232, 4x4x464. Preactivation features: V1, the last block's sum
(or concatenation) before its ReLU; V2, the last block's concatenation before the final ReLU of its
branch, and before the shuffle (mdistiller's rule, so its channels are in another order than the
stage feature's). Weights start from PyTorch's defaults (neither reference initializes them).
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.cifar_layers import (channel_shuffle, conv, global_average, model_outputs,
                                        run_layers, torch_default_dense,
                                        torch_default_kernel_init)
from kd_jax.models.preresnet import make_norm

STEM_CHANNELS = 24
V1_STAGES = ((240, 4), (480, 8), (960, 4))  # (output channels, blocks)
V1_GROUPS = 3
V2_STAGES = ((116, 3), (232, 7), (464, 3))  # (output channels, basic blocks after down-sampling)
V2_HEAD_CHANNELS = 1024
V2_GROUPS = 2


def torch_conv(features: int, kernel_size: int, name: str, dtype: Any, **kwargs) -> nn.Conv:
  """A bias-free convolution with PyTorch's default Conv2d init (padding 1 for 3x3 kernels)."""
  return conv(features, kernel_size, name, dtype, padding=kernel_size // 2,
              kernel_init=torch_default_kernel_init, **kwargs)


def stem(x, norm, dtype):
  """conv1x1 to 24 channels (`conv1`), BN (`bn1`), ReLU, at full resolution."""
  return nn.relu(norm(name='bn1')(torch_conv(STEM_CHANNELS, 1, 'conv1', dtype)(x)))


class ShuffleV1Bottleneck(nn.Module):
  """Returns (output, preactivation)."""
  out_channels: int
  stride: int
  groups: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # A stride-2 block appends its (pooled) input to what its convolutions compute.
    conv_channels = self.out_channels - x.shape[-1] if self.stride == 2 else self.out_channels
    mid = conv_channels // 4
    first_groups = 1 if x.shape[-1] == STEM_CHANNELS else self.groups
    y = torch_conv(mid, 1, 'conv1', self.dtype, groups=first_groups)(x)
    y = channel_shuffle(nn.relu(self.norm(name='bn1')(y)), first_groups)
    y = torch_conv(mid, 3, 'conv2', self.dtype, stride=self.stride, groups=mid)(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.norm(name='bn3')(torch_conv(conv_channels, 1, 'conv3', self.dtype,
                                         groups=self.groups)(y))
    if self.stride == 2:
      # PyTorch's AvgPool2d(3, stride=2, padding=1) counts the zero padding (count_include_pad).
      shortcut = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             count_include_pad=True)
      preact = jnp.concatenate([y, shortcut], axis=-1)
    else:
      preact = y + x
    return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
  """ShuffleNet v1 for 32x32 images, 3 groups."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    norm = make_norm('batch', train, self.dtype)
    layers = [[ShuffleV1Bottleneck(out_channels=channels, stride=2 if i == 0 else 1,
                                   groups=V1_GROUPS, norm=norm, dtype=self.dtype,
                                   name=f'layer{stage}_{i}') for i in range(blocks)]
              for stage, (channels, blocks) in enumerate(V1_STAGES, start=1)]
    x, stages, preacts = run_layers(stem(x, norm, self.dtype), layers)
    pooled = global_average(x)
    logits = torch_default_dense(self.num_classes, pooled.shape[-1], 'linear', self.dtype)(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)


class ShuffleV2DownBlock(nn.Module):
  """Two stride-2 branches to half of `out_channels` each, concatenated and shuffled."""
  out_channels: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    mid, norm = self.out_channels // 2, self.norm
    left = norm(name='bn1')(torch_conv(x.shape[-1], 3, 'conv1', self.dtype, stride=2,
                                       groups=x.shape[-1])(x))
    left = nn.relu(norm(name='bn2')(torch_conv(mid, 1, 'conv2', self.dtype)(left)))
    right = nn.relu(norm(name='bn3')(torch_conv(mid, 1, 'conv3', self.dtype)(x)))
    right = norm(name='bn4')(torch_conv(mid, 3, 'conv4', self.dtype, stride=2, groups=mid)(right))
    right = nn.relu(norm(name='bn5')(torch_conv(mid, 1, 'conv5', self.dtype)(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), V2_GROUPS)


class ShuffleV2BasicBlock(nn.Module):
  """Keeps the first half of the channels, transforms the second; returns (output, preact)."""
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    half = x.shape[-1] // 2
    kept, y = x[..., :half], x[..., half:]
    y = nn.relu(self.norm(name='bn1')(torch_conv(half, 1, 'conv1', self.dtype)(y)))
    y = self.norm(name='bn2')(torch_conv(half, 3, 'conv2', self.dtype, groups=half)(y))
    y = self.norm(name='bn3')(torch_conv(half, 1, 'conv3', self.dtype)(y))
    preact = jnp.concatenate([kept, y], axis=-1)
    out = jnp.concatenate([kept, nn.relu(y)], axis=-1)
    return channel_shuffle(out, V2_GROUPS), preact


class ShuffleNetV2(nn.Module):
  """ShuffleNet v2 (net size 1) for 32x32 images."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    norm = make_norm('batch', train, self.dtype)
    x = stem(x, norm, self.dtype)
    stages, preacts = [x], [x]
    for stage, (channels, blocks) in enumerate(V2_STAGES, start=1):
      x = ShuffleV2DownBlock(out_channels=channels, norm=norm, dtype=self.dtype,
                             name=f'layer{stage}_0')(x)
      for i in range(1, blocks + 1):
        x, preact = ShuffleV2BasicBlock(norm=norm, dtype=self.dtype, name=f'layer{stage}_{i}')(x)
      stages.append(x)
      preacts.append(preact)
    x = nn.relu(norm(name='bn2')(torch_conv(V2_HEAD_CHANNELS, 1, 'conv2', self.dtype)(x)))
    pooled = global_average(x)
    logits = torch_default_dense(self.num_classes, pooled.shape[-1], 'linear', self.dtype)(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)
