"""ResNet-50 v1.5 for ImageNet (He et al. 2016; torchvision's variant), the paper's Table 2 model.

* stem: 7x7/2 conv (64), BatchNorm, ReLU, 3x3/2 max pool (padding 1);
* four stages of [3, 4, 6, 3] bottleneck blocks, 64 / 128 / 256 / 512 planes, expansion 4, strides
  1, 2, 2, 2; v1.5 puts each stage's stride on the 3x3 convolution (v1 had it on the first 1x1);
* a block: conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4 * planes)-BN, plus the shortcut (the
  identity, or a strided 1x1 conv + BN where the shape changes), then ReLU;
* head: global average pool, dense layer.

25,557,032 parameters at 1000 classes, torchvision's resnet50 count (BatchNorm scales and biases
counted, running statistics not). BatchNorm as the other models (PyTorch's momentum and epsilon,
kd_jax/models/preresnet.py); convolutions without bias, initialized as kd_jax/models/layers.py says.
`stage_sizes` and `width` make smaller members of the family for tests.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import conv_init
from kd_jax.models.preresnet import make_norm

RESNET50_STAGES = (3, 4, 6, 3)
EXPANSION = 4


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck block (post-activation; stride on the 3x3 conv)."""
  planes: int
  stride: int
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    out_channels = self.planes * EXPANSION
    y = nn.relu(self.norm()(conv(self.planes, (1, 1))(x)))
    y = nn.relu(self.norm()(conv(self.planes, (3, 3), strides=self.stride, padding=1)(y)))
    y = self.norm()(conv(out_channels, (1, 1))(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = self.norm()(conv(out_channels, (1, 1), strides=self.stride)(x))
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ImageNet ResNet with bottleneck blocks; the defaults are ResNet-50.

  Sows 'stage1'..'stage4' (56, 28, 14 and 7 pixels wide for 224x224 input).
  """
  num_classes: int
  stage_sizes: Sequence[int] = RESNET50_STAGES
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = make_norm('batch', train, self.dtype)
    x = nn.Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype)(x)
    x = nn.relu(norm()(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        x = Bottleneck(planes=self.width * 2**stage, stride=2 if stage > 0 and i == 0 else 1,
                       norm=norm, dtype=self.dtype)(x)
      self.sow('intermediates', f'stage{stage + 1}', x)
    # Pool in float32, as PreResNet does, so bf16 does not lose the sum of 7x7 positions.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
