"""VGG-16 without BatchNorm for 32x32 CIFAR images (the paper's appendix experiments).

The 13 convolutions follow configuration 'D' of Simonyan & Zisserman (3x3, bias, ReLU; five 2x2 max
pools), so inputs must be 32x32 (the map is 1x1x512 before the classifier). Two classifier heads:

  'dropout_mlp' (the paper's original code, gnosis/models/vgg.py, after Garipov's CIFAR VGG):
      Dropout(0.5) -> Dense 512 -> ReLU -> Dropout(0.5) -> Dense 512 -> ReLU -> Dense num_classes;
      15,291,300 parameters at 100 classes.
  'linear' (ours, like the CIFAR VGGs of "pytorch-classification"): one Dense layer on the 512
      features; 14,765,988 parameters at 100 classes, no dropout.

Dropout is active only with train=True, which then needs a 'dropout' PRNG stream
(`model.apply(..., train=True, rngs={'dropout': key})`; kd_jax.train passes one per step).
"""

from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import conv_init


# Channel counts, 'M' = 2x2 max pool.
VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512,
                'M')
# Classifier heads; the first is the original code's.
VGG_HEADS = ('dropout_mlp', 'linear')
# The original's nn.Dropout() default.
HEAD_DROPOUT_RATE = 0.5


class VGG(nn.Module):
  """VGG without normalization; `width` scales the channels relative to the standard 64.

  The hidden layers of the 'dropout_mlp' head are as wide as the last conv block (512 at width 64).
  Sows 'stage{i}' after each pooling block (16, 8, 4, 2, 1 pixels for 32x32 input).
  """
  num_classes: int
  layout: Sequence[Union[int, str]] = VGG16_LAYOUT
  width: int = 64
  head: str = 'dropout_mlp'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.head not in VGG_HEADS:
      raise ValueError(f'VGG head {self.head!r} is not one of {VGG_HEADS}')
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
    if self.head == 'dropout_mlp':
      for _ in range(2):
        x = nn.Dropout(HEAD_DROPOUT_RATE, deterministic=not train)(x)
        x = nn.relu(nn.Dense(x.shape[-1], dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
