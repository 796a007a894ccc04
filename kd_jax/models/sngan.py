"""SN-GAN (Miyato et al. 2018) ResNet generator and spectrally normalized discriminator, as in the
paper's original code (samuelstanton/gnosis, gnosis/models/sngan.py, after mfinzi/olive-oil-ml).

CIFAR (32x32): z (128) -> Dense 4x4xk -> 3 residual up-blocks (BatchNorm, ReLU, 2x bilinear upsampling,
3x3 convs; a 1x1 bypass only where the width changes) -> BatchNorm, ReLU, 3x3 conv -> tanh, with
k = 256; the discriminator: a first residual down-block (no ReLU on the raw image), a second down-block,
two blocks at 8x8, ReLU, global average pooling, Dense 1, width 128, spectral normalization on every
Conv and Dense kernel (one power iteration per call). The generator has no spectral normalization.

Other image sizes use the same blocks: the generator starts at size / 2^u with u the largest of 3, 2, 1
that leaves a start of at least 4 pixels (28x28 Fashion-MNIST: 7x7 and two up-blocks; 8x8 digits: 4x4
and one), and the discriminator always has its two down-blocks. The laptop configs shrink k.

Images are on the generator's tanh scale [-1, 1] (the original's 'unitcube' normalization of [0, 1]
pixels); kd_jax.gan converts between that and the classifiers' [0, 255] scale.

Initialization: Xavier-uniform kernels (gain sqrt(2) on 1x1 convs, 1 elsewhere), as the original. The
biases start at zero (PyTorch's default is uniform in +-1/sqrt(fan_in)).

Variables: 'params'; 'batch_stats' holds the generator's BatchNorm statistics and the discriminator's
power-iteration vectors u and sigma (flax.linen.SpectralNorm keeps them in that collection). Call both
with mutable=['batch_stats'] while training, as BatchNorm models elsewhere in kd_jax.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_xavier = nn.initializers.xavier_uniform()
# xavier_uniform with gain sqrt(2): the variance scale is gain^2.
_xavier_1x1 = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")


def start_size(image_size: int) -> tuple:
  """(start, up-blocks): the generator's first feature map size and its number of 2x up-blocks."""
  for ups in (3, 2, 1):
    if image_size % 2**ups == 0 and image_size // 2**ups >= 4:
      return image_size // 2**ups, ups
  raise ValueError(f"SN-GAN needs an image size divisible by 2 with a start of >= 4 pixels, got "
                   f"{image_size}")


def _conv(features, kernel, name=None):
  init = _xavier_1x1 if kernel == 1 else _xavier
  return nn.Conv(features, (kernel, kernel), padding="SAME", kernel_init=init, name=name)


def _upsample(x):
  """2x bilinear upsampling (PyTorch's nn.Upsample(mode='bilinear'): half-pixel centres, edges
  clamped)."""
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


def _downsample(x):
  """2x2 average pooling, as a reshape and mean: with nn.avg_pool's reduce_window XLA:CPU ran the
  kernel gradient of the convolution before it slowly (the laptop GAN's step: 2.25 s against 1.64 s
  with this, on a loaded 2-core CPU)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class GeneratorBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)
    y = _upsample(nn.relu(norm()(x)))
    y = _conv(self.features, 3)(y)
    y = _conv(self.features, 3)(nn.relu(norm()(y)))
    bypass = _upsample(x)
    if x.shape[-1] != self.features:
      bypass = _conv(self.features, 1)(bypass)
    return y + bypass


class Generator(nn.Module):
  """z (N, z_dim) -> images (N, size, size, channels) in [-1, 1]."""
  image_size: int
  channels: int
  width: int = 256  # k

  @nn.compact
  def __call__(self, z, train: bool = False):
    start, ups = start_size(self.image_size)
    x = nn.Dense(start * start * self.width, kernel_init=_xavier)(z.astype(jnp.float32))
    x = x.reshape((z.shape[0], start, start, self.width))
    for _ in range(ups):
      x = GeneratorBlock(self.width)(x, train)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    x = _conv(self.channels, 3)(nn.relu(x))
    return jnp.tanh(x)


class DiscriminatorBlock(nn.Module):
  features: int
  downsample: bool
  first: bool = False  # no ReLU on the raw image

  @nn.compact
  def __call__(self, x, update_stats: bool):
    def sn_conv(kernel, inputs):
      return nn.SpectralNorm(_conv(self.features, kernel))(inputs, update_stats=update_stats)

    y = x if self.first else nn.relu(x)
    y = sn_conv(3, y)
    y = sn_conv(3, nn.relu(y))
    bypass = x
    if x.shape[-1] != self.features:
      bypass = sn_conv(1, bypass)
    if self.downsample:
      y, bypass = _downsample(y), _downsample(bypass)
    return y + bypass


class Discriminator(nn.Module):
  """images (N, H, W, C) in [-1, 1] -> one float32 score per image (N,)."""
  width: int = 128  # k

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    x = DiscriminatorBlock(self.width, downsample=True, first=True)(x, update_stats)
    x = DiscriminatorBlock(self.width, downsample=True)(x, update_stats)
    x = DiscriminatorBlock(self.width, downsample=False)(x, update_stats)
    x = DiscriminatorBlock(self.width, downsample=False)(x, update_stats)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    x = nn.SpectralNorm(nn.Dense(1, kernel_init=_xavier))(x, update_stats=update_stats)
    return x[:, 0].astype(jnp.float32)


def build(gan_cfg, image_shape) -> tuple:
  """(Generator, Discriminator) for config.gan and the data's (H, W, C) image shape."""
  height, width, channels = image_shape
  if height != width:
    raise ValueError(f"SN-GAN needs square images, got {height}x{width}")
  generator: Any = Generator(image_size=height, channels=channels, width=gan_cfg.generator_width)
  return generator, Discriminator(width=gan_cfg.discriminator_width)
