"""On-device augmentation and normalization of uint8 image batches, inside the compiled step.

Each function takes an RNG key and a batch (B, H, W, C) and is pure, so teacher and student see the
identical augmented batch and a resumed run draws the same augmentations as an uninterrupted one.
"""

import jax
import jax.numpy as jnp


def random_crop(key, images, padding: int = 4):
  """Zero-pads each image by `padding` pixels and crops back to the original size at a random offset."""
  batch, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def random_horizontal_flip(key, images):
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def crop_flip(key, images):
  """The paper's baseline policy for CIFAR: random crop (pad 4) + horizontal flip."""
  crop_key, flip_key = jax.random.split(key)
  return random_horizontal_flip(flip_key, random_crop(crop_key, images))


def no_augmentation(key, images):
  del key
  return images


POLICIES = {"none": no_augmentation, "crop_flip": crop_flip}


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 -> float, per-channel standardization with the training set's statistics."""
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)
