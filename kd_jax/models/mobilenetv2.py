"""The CIFAR MobileNetV2 of the distillation benchmark (mobilenetv2.py of RepDistiller / mdistiller;
its `mobile_half`: expansion 6, width multiplier 0.5, registered as 'MobileNetV2').

* stem (`conv1`): conv3x3 stride 2 (32 * width channels), BN, ReLU - so a 32x32 image is 16x16
  after it;
* seven stages (`blocks.0..6`) of inverted residuals, (expansion, channels, blocks, stride) =
  (1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2),
  (t, 320, 1, 1), channels times the width multiplier (rounded down);
* an inverted residual (`conv`, an nn.Sequential): conv1x1 to expansion * input channels, BN, ReLU,
  depthwise conv3x3(stride), BN, ReLU, conv1x1 (linear bottleneck), BN; plus the input when the
  stride is 1 and the width unchanged. The 1x1 expansion is there even at expansion 1;
* head (`conv2`): conv1x1 to 1280 channels, BN, ReLU, global average pool, Linear (`classifier.0`).

Stage features (32x32 input): the stem output (16x16x16), then the outputs of blocks 1, 2, 4 and 6
(16x16x12, 8x8x16, 4x4x48, 2x2x160). Those end in a BatchNorm without ReLU, so the preactivation
features are the same tensors (RepDistiller returns the same list for both). Convolutions start from
N(0, 2 / fan_out), the classifier from N(0, 0.01^2) with zero bias, as in the reference.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.cifar_layers import conv, global_average, model_outputs, small_normal_init
from kd_jax.models.preresnet import make_norm

# (expansion, channels, blocks, stride) per stage; None = the model's expansion.
STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
          (None, 160, 3, 2), (None, 320, 1, 1))
FEATURE_STAGES = (1, 2, 4, 6)  # the blocks whose outputs are stage features
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280  # times the width multiplier only where it exceeds 1, as in the reference


class InvertedResidual(nn.Module):
  """Expansion 1x1 - depthwise 3x3(stride) - linear 1x1 projection, with the identity if it fits."""
  channels: int
  stride: int
  expansion: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expansion
    y = nn.relu(self.norm(name='conv_1')(conv(hidden, 1, 'conv_0', self.dtype)(x)))
    y = conv(hidden, 3, 'conv_3', self.dtype, stride=self.stride, padding=1, groups=hidden)(y)
    y = nn.relu(self.norm(name='conv_4')(y))
    y = self.norm(name='conv_7')(conv(self.channels, 1, 'conv_6', self.dtype)(y))
    if self.stride == 1 and x.shape[-1] == self.channels:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 for 32x32 images; the defaults are the benchmark's (mobile_half)."""
  num_classes: int
  expansion: int = 6
  width_multiplier: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    norm = make_norm('batch', train, self.dtype)
    stem = conv(int(STEM_CHANNELS * self.width_multiplier), 3, 'conv1_0', self.dtype, stride=2,
                padding=1)
    x = nn.relu(norm(name='conv1_1')(stem(x)))
    stages = [x]
    for stage, (expansion, channels, blocks, stride) in enumerate(STAGES):
      for i in range(blocks):
        x = InvertedResidual(channels=int(channels * self.width_multiplier),
                             stride=stride if i == 0 else 1,
                             expansion=self.expansion if expansion is None else expansion,
                             norm=norm, dtype=self.dtype, name=f'blocks_{stage}_{i}')(x)
      if stage in FEATURE_STAGES:
        stages.append(x)
    head = HEAD_CHANNELS * max(self.width_multiplier, 1.0)
    x = nn.relu(norm(name='conv2_1')(conv(int(head), 1, 'conv2_0', self.dtype)(x)))
    pooled = global_average(x)
    logits = nn.Dense(self.num_classes, kernel_init=small_normal_init, dtype=self.dtype,
                      name='classifier_0')(pooled)
    return model_outputs(self, logits, stages, stages, pooled, features)
