"""The BatchNorm VGGs of the distillation benchmark (vgg.py of RepDistiller / mdistiller): vgg8 and
vgg13.

Five blocks (`block0..4`, each an nn.Sequential) of conv3x3 (with bias)-BN-ReLU layers, the last
ReLU of every block left to the forward pass; 2x2 max pools between blocks 0-1, 1-2 and 2-3, and
between 3-4 only for 64x64 inputs (the reference's rule: a 32x32 image reaches blocks 3 and 4 at
4x4); then a global average pool and one Linear layer (`classifier`) on the 512 features. Unlike
kd_jax.models.vgg (the paper's VGG-16 without normalization) the layout is given per block.

Stage features (32x32 input): block outputs after their ReLU, 32x32x64, 16x16x128, 8x8x256,
4x4x512, 4x4x512 for both models; the preactivation features are the same before that ReLU (the
blocks' last BatchNorm outputs; the first block's feature is post-ReLU in both lists, as in the
reference). Convolutions start from N(0, 2 / fan_out) with zero bias, the classifier from
N(0, 0.01^2) with zero bias, as in the reference.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.cifar_layers import conv, global_average, model_outputs, small_normal_init
from kd_jax.models.preresnet import make_norm

# Channels of each block's convolutions (the reference's configurations 'S' and 'B').
VGG8_BLOCKS = ((64,), (128,), (256,), (512,), (512,))
VGG13_BLOCKS = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
# Input size at which the reference also pools between blocks 3 and 4.
POOL3_INPUT_SIZE = 64
# Each conv of a block is followed by BN and ReLU: indices 3j, 3j + 1, 3j + 2 of its nn.Sequential.
SEQUENTIAL_LAYERS_PER_CONV = 3


class CifarVGG(nn.Module):
  """VGG with BatchNorm for 32x32 (or 64x64) images; `blocks` gives each block's conv channels."""
  num_classes: int
  blocks: Sequence[Sequence[int]] = VGG13_BLOCKS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    norm = make_norm('batch', train, self.dtype)
    input_size = x.shape[1]
    stages, preacts = [], []
    for block, channels in enumerate(self.blocks):
      if block > 0 and (block < len(self.blocks) - 1 or input_size == POOL3_INPUT_SIZE):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for j, width in enumerate(channels):
        if j:
          x = nn.relu(x)
        index = SEQUENTIAL_LAYERS_PER_CONV * j
        x = conv(width, 3, f'block{block}_{index}', self.dtype, padding=1, use_bias=True)(x)
        x = norm(name=f'block{block}_{index + 1}')(x)
      preacts.append(x)
      x = nn.relu(x)
      stages.append(x)
    preacts[0] = stages[0]
    pooled = global_average(x)
    logits = nn.Dense(self.num_classes, kernel_init=small_normal_init, dtype=self.dtype,
                      name='classifier')(pooled)
    return model_outputs(self, logits, stages, preacts, pooled, features)
