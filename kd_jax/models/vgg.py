"""VGG-16 without BatchNorm for 32x32 CIFAR images (the paper's appendix experiments).

The 13 convolutions follow configuration 'D' of Simonyan & Zisserman (3x3, bias, ReLU; five 2x2 max
pools). Like the CIFAR VGGs of "pytorch-classification", the classifier is a single Dense layer on
the flattened 1x1x512 map instead of ImageNet's three 4096-wide layers, so inputs must be 32x32.
"""

from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

# kaiming_normal_(mode='fan_out') as the CIFAR VGG code initializes convs; 'normal' is untruncated.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# Channel counts, 'M' = 2x2 max pool.
VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512,
                'M')


class VGG(nn.Module):
  """VGG without normalization; `width` scales the channels relative to the standard 64.

  Sows 'stage{i}' after each pooling block (16, 8, 4, 2, 1 pixels for 32x32 input).
  """
  num_classes: int
  layout: Sequence[Union[int, str]] = VGG16_LAYOUT
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No dropout or batch statistics.
    stage = 0
    for item in self.layout:
      if item == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        stage += 1
        self.sow('intermediates', f'stage{stage}', x)
      else:
        channels = item * self.width // 64
        x = nn.Conv(channels, (3, 3), padding=1, kernel_init=conv_init, dtype=self.dtype)(x)
        x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
