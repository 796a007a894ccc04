"""Small models for fast CPU experiments and tests: a CNN for 8x8 scikit-learn digits and an MLP."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import conv_init


class DigitsCNN(nn.Module):
  """conv `width`@3x3 -> ReLU -> conv 2*`width`@3x3 -> ReLU -> maxpool 2 -> Dense 4*`width` -> ReLU
  -> Dense num_classes, for 8x8x1 digits (about 150k parameters at the default width 32).

  Sows 'stage1' (8x8xwidth), 'stage2' (4x4x2*width) and 'stage3' (4*width) after each hidden block.
  """
  num_classes: int
  width: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No dropout or batch statistics.
    x = nn.relu(nn.Conv(self.width, (3, 3), padding=1, kernel_init=conv_init, dtype=self.dtype)(x))
    self.sow('intermediates', 'stage1', x)
    x = nn.relu(nn.Conv(2 * self.width, (3, 3), padding=1, kernel_init=conv_init,
                        dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    self.sow('intermediates', 'stage2', x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(4 * self.width, dtype=self.dtype)(x))
    self.sow('intermediates', 'stage3', x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class MLP(nn.Module):
  """flatten -> Dense `width` -> ReLU -> Dense `width` -> ReLU -> Dense num_classes.

  Sows 'stage1' and 'stage2' after the two hidden layers.
  """
  num_classes: int
  width: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No dropout or batch statistics.
    x = x.reshape((x.shape[0], -1))
    for stage in (1, 2):
      x = nn.relu(nn.Dense(self.width, dtype=self.dtype)(x))
      self.sow('intermediates', f'stage{stage}', x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
