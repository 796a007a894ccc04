"""On-device augmentation (distillation-data policies) and normalization of image batches.

Everything here runs inside the compiled train step on a batch (B, H, W, C), C = 1 or 3, and is a
pure function of an RNG key and the batch, so teacher and student see the identical augmented batch
and a resumed run draws the same augmentations as an uninterrupted one.

The public entry point is `make_policy(name, cfg)`, which returns `policy(key, images_uint8)` giving
float32 images in [0, 255] of the same shape (feed them to `normalize`). `name` is one policy or
several joined by '+', applied left to right, e.g. 'crop_flip+rotate+vflip+color_jitter'.

Each random op is split into a deterministic core that takes its draw explicitly (offsets, angles,
factors, lambdas, boxes, masks) and a keyed wrapper that samples the draw; the cores are what the
tests compare against NumPy references. Semantics follow torchvision's transforms of the same name.

Where the paper's original code (samuelstanton/gnosis) made a choice, the default reproduces it and our
alternative is a named option: rotation samples the nearest pixel, as torchvision's RandomRotation on
PIL images (`rotate_interpolation`: 'nearest' | 'bilinear'), and MixUp draws one lambda for the whole
batch, as gnosis' mixup_data (`mixup_lambda`: 'batch' | 'example'). The original has no CutMix.

Each keyed wrapper makes a single `jax.random.uniform` call and derives all its draws (integers by
flooring, Bernoullis by thresholding, permutations by argsort) from it: every random call inlines a
Threefry hash into the step, and on CPU each one adds a noticeable amount of compile time.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.augment_policies import DEFAULTS, MIXUP_LAMBDAS, ROTATE_INTERPOLATIONS, parse_policy
from kd_jax.errors import KdJaxError

MAX_VALUE = 255.0  # images are kept on the uint8 scale until `normalize`

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Crop and flips.


def crop(images, offsets, padding: int = 4):
  """Zero-pads each image by `padding` pixels and crops back to (H, W) at offsets (B, 2) = (row, col).

  Offset (padding, padding) is the identity.
  """
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return jax.vmap(crop_one)(padded, offsets)


def _uniform_int(u, n):
  """U[0, 1) draws -> integers uniform over {0, ..., n - 1} (n may be an array)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _permutation(u):
  """Uniformly random permutations (along the last axis) from i.i.d. U[0, 1) draws.

  Ties (probability ~ n^2 / 2^24 for n float32 draws) only make a permutation slightly less
  random, never invalid: argsort always returns one.
  """
  return jnp.argsort(u, axis=-1)


def random_crop(key, images, padding: int = 4):
  """Random crop with zero padding: offsets uniform over the 2 * padding + 1 positions per axis."""
  u = jax.random.uniform(key, (images.shape[0], 2))
  return crop(images, _uniform_int(u, 2 * padding + 1), padding)


def horizontal_flip(images, flip):
  """Mirrors left-right the images whose boolean `flip` (B,) is set."""
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def vertical_flip(images, flip):
  """Mirrors top-bottom the images whose boolean `flip` (B,) is set."""
  return jnp.where(flip[:, None, None, None], images[:, ::-1, :, :], images)


def random_horizontal_flip(key, images):
  """Horizontal flip with probability 0.5 per image."""
  return horizontal_flip(images, jax.random.uniform(key, (images.shape[0],)) < 0.5)


def random_vertical_flip(key, images):
  """Vertical flip with probability 0.5 per image."""
  return vertical_flip(images, jax.random.uniform(key, (images.shape[0],)) < 0.5)


def crop_flip(key, images):
  """The paper's baseline policy for CIFAR: random crop (pad 4) + horizontal flip."""
  crop_key, flip_key = jax.random.split(key)
  return random_horizontal_flip(flip_key, random_crop(crop_key, images))


def no_augmentation(key, images):
  del key
  return images


# ----------------------------------------------------------------------------------------------
# Rotation.


def _bilinear_sample(images, rows, cols):
  """Samples images (B, H, W, C) at float source coordinates rows, cols (B, H', W').

  Neighbours outside the image count as zero, so pixels near the border fade into the zero fill
  (torchvision's rotate does the same through grid_sample with zero padding).
  """
  batch, height, width, channels = images.shape
  flat = images.reshape(batch, height * width, channels)
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_frac, col_frac = rows - row0, cols - col0
  out = jnp.zeros(rows.shape + (channels,), jnp.float32)
  for row, row_weight in ((row0, 1.0 - row_frac), (row0 + 1.0, row_frac)):
    for col, col_weight in ((col0, 1.0 - col_frac), (col0 + 1.0, col_frac)):
      inside = (row >= 0) & (row <= height - 1) & (col >= 0) & (col <= width - 1)
      # Clipping only keeps the gather in bounds; outside neighbours get zero weight below.
      index = (jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)).astype(jnp.int32)
      values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1).reshape(out.shape)
      weight = jnp.where(inside, row_weight * col_weight, 0.0)
      out = out + weight[..., None] * values
  return out


def _nearest_sample(images, rows, cols):
  """Samples images (B, H, W, C) at the pixel nearest to float source coordinates (B, H', W').

  Pixel i covers [i - 0.5, i + 0.5), so the nearest pixel is floor(coordinate + 0.5) (halves round
  up), as PIL's NEAREST affine transform, which torchvision's RandomRotation calls on PIL images;
  sources outside the image give the zero fill.
  """
  batch, height, width, channels = images.shape
  flat = images.reshape(batch, height * width, channels)
  row, col = jnp.floor(rows + 0.5), jnp.floor(cols + 0.5)
  inside = (row >= 0) & (row <= height - 1) & (col >= 0) & (col <= width - 1)
  index = (jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)).astype(jnp.int32)
  values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
  return jnp.where(inside[..., None], values.reshape(rows.shape + (channels,)), 0.0)


_SAMPLERS = {"nearest": _nearest_sample, "bilinear": _bilinear_sample}


def rotate(images, degrees, interpolation: str = "nearest"):
  """Rotates each image by `degrees` (B,) about its centre; zero fill, same size.

  Positive angles turn the picture counter-clockwise as displayed (rows down, columns right), as
  torchvision's rotate; so 90 degrees on a square image equals np.rot90(image) (axes H, W).
  `interpolation` is 'nearest' (the original's: torchvision's default, exact pixel values) or
  'bilinear' (ours: smoother, blends the border into the fill).
  """
  _, height, width, _ = images.shape
  theta = jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)
  cos, sin = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
  centre_row, centre_col = (height - 1) / 2.0, (width - 1) / 2.0
  dy = jnp.arange(height, dtype=jnp.float32)[None, :, None] - centre_row
  dx = jnp.arange(width, dtype=jnp.float32)[None, None, :] - centre_col
  # Inverse mapping: each output pixel reads the source pixel that the rotation carries onto it.
  src_cols = cos * dx - sin * dy + centre_col
  src_rows = sin * dx + cos * dy + centre_row
  return _SAMPLERS[interpolation](images.astype(jnp.float32), src_rows, src_cols)


def random_rotate(key, images, max_degrees: float = 20.0, interpolation: str = "nearest"):
  """Rotation by an angle ~ U[-max_degrees, max_degrees] per image."""
  degrees = jax.random.uniform(key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)
  return rotate(images, degrees, interpolation)


# ----------------------------------------------------------------------------------------------
# Colour jitter (torchvision ColorJitter semantics on the [0, 255] scale).


def grayscale(images):
  """Luma (B, H, W, 1) of RGB images; a single-channel image is its own grayscale."""
  if images.shape[-1] == 1:
    return images
  return jnp.tensordot(images, jnp.asarray(_GRAY_WEIGHTS, images.dtype), axes=1)[..., None]


def _blend(images, other, factor):
  """factor * images + (1 - factor) * other, clipped to the valid range (torchvision's _blend)."""
  factor = factor[:, None, None, None]
  return jnp.clip(factor * images + (1.0 - factor) * other, 0.0, MAX_VALUE)


def adjust_brightness(images, factor):
  """Multiplies each image by factor (B,), clipped."""
  return _blend(images, 0.0, factor)


def adjust_contrast(images, factor):
  """Blends each image with the mean of its grayscale (one scalar per image)."""
  return _blend(images, jnp.mean(grayscale(images), axis=(1, 2, 3), keepdims=True), factor)


def adjust_saturation(images, factor):
  """Blends each image with its grayscale; identity for single-channel images."""
  if images.shape[-1] == 1:
    return images
  return _blend(images, grayscale(images), factor)


def rgb_to_hsv(images):
  """RGB (..., 3) on any scale -> (hue in [0, 1), saturation in [0, 1], value on the input scale)."""
  red, green, blue = images[..., 0], images[..., 1], images[..., 2]
  value = jnp.max(images, axis=-1)
  chroma = value - jnp.min(images, axis=-1)
  # Safe denominators: grey pixels (chroma 0) and black pixels (value 0) get hue 0 / saturation 0.
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  hue = jnp.where(value == red, (green - blue) / safe_chroma,
                  jnp.where(value == green, (blue - red) / safe_chroma + 2.0,
                            (red - green) / safe_chroma + 4.0))
  hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
  return hue, saturation, value


def hsv_to_rgb(hue, saturation, value):
  """Inverse of `rgb_to_hsv`; channel n of (R, G, B) = V - V S clip(min(k, 4 - k), 0, 1)."""
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = jnp.mod(n + hue * 6.0, 6.0)
    channels.append(value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return jnp.stack(channels, axis=-1)


def adjust_hue(images, shift):
  """Rotates the hue of each image by `shift` (B,) turns in HSV space; identity for one channel."""
  if images.shape[-1] == 1:
    return images
  hue, saturation, value = rgb_to_hsv(images)
  hue = jnp.mod(hue + shift[:, None, None], 1.0)
  return jnp.clip(hsv_to_rgb(hue, saturation, value), 0.0, MAX_VALUE)


def color_jitter_apply(images, brightness, contrast, saturation, hue, order=None):
  """Applies the four adjustments with the given per-image factors (B,) in a per-image order.

  `order` (B, 4) holds a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per image;
  None means that fixed order. At each of the four positions every adjustment is computed and each
  image keeps the one its order names: the ops are elementwise and cheap next to the networks, and
  this keeps torchvision's per-sample random order without data-dependent control flow.
  """
  images = images.astype(jnp.float32)
  ops = (lambda x: adjust_brightness(x, brightness), lambda x: adjust_contrast(x, contrast),
         lambda x: adjust_saturation(x, saturation), lambda x: adjust_hue(x, hue))
  if order is None:
    for op in ops:
      images = op(images)
    return images
  for position in range(len(ops)):
    choice = order[:, position][:, None, None, None]
    images = jnp.select([choice == i for i in range(len(ops))], [op(images) for op in ops])
  return images


def random_color_jitter(key, images, strength: float = 0.2):
  """ColorJitter(strength, strength, strength, strength) with a random order per image.

  Brightness, contrast and saturation factors ~ U[max(0, 1 - s), 1 + s]; hue shift ~ U[-s, s] turns.
  """
  u = jax.random.uniform(key, (8, images.shape[0]))
  low = max(0.0, 1.0 - strength)
  factors = low + (1.0 + strength - low) * u[:3]
  hue = strength * (2.0 * u[3] - 1.0)
  order = _permutation(u[4:].T)  # argsort along the last axis: one permutation of 4 per image
  return color_jitter_apply(images, factors[0], factors[1], factors[2], hue, order)


# ----------------------------------------------------------------------------------------------
# Mixing within the batch: MixUp and CutMix (inputs only; the teacher labels the result).


def _mixing_fraction(key, u, alpha: float):
  """The given U[0, 1) draws when alpha == 0, else fresh Beta(alpha, alpha) draws from `key`."""
  if alpha > 0:
    return jax.random.beta(key, alpha, alpha, u.shape)
  return u


def sample_mixup(key, batch: int, alpha: float = 0.0, lambda_per: str = "batch"):
  """Lambdas (B,) and the partner permutation (B,) used by `mixup`.

  lambda_per='batch' (the original's mixup_data: one np.random.beta draw per batch) repeats a single
  lambda over the batch; 'example' (ours) draws one per image.
  """
  u = jax.random.uniform(key, (2, batch))
  num_lambdas = 1 if lambda_per == "batch" else batch
  lam = _mixing_fraction(jax.random.fold_in(key, 1), u[0, :num_lambdas], alpha)
  return jnp.broadcast_to(lam, (batch,)), _permutation(u[1])


def mix(images, lam, perm):
  """lam * x + (1 - lam) * x[perm], per example."""
  images = images.astype(jnp.float32)
  lam = lam[:, None, None, None]
  return lam * images + (1.0 - lam) * images[perm]


def mixup(key, images, alpha: float = 0.0, lambda_per: str = "batch"):
  """MixUp on inputs only: each image mixed with a random partner from the same batch."""
  lam, perm = sample_mixup(key, images.shape[0], alpha, lambda_per)
  return mix(images, lam, perm)


def sample_cutmix(key, shape, alpha: float = 0.0):
  """Boxes (B, 4) = (top, left, height, width) and the partner permutation (B,) used by `cutmix`.

  The box area fraction f ~ U[0, 1] (or Beta(alpha, alpha)); the box has the image's aspect ratio
  (sides rounded from H sqrt(f), W sqrt(f)) and lies wholly inside the image, so the pasted fraction
  is f up to rounding (unlike the original CutMix, which clips a box centred anywhere).
  """
  batch, height, width, _ = shape
  u = jax.random.uniform(key, (4, batch))
  side = jnp.sqrt(_mixing_fraction(jax.random.fold_in(key, 1), u[0], alpha))
  box_h = jnp.round(side * height).astype(jnp.int32)
  box_w = jnp.round(side * width).astype(jnp.int32)
  top = _uniform_int(u[1], height - box_h + 1)
  left = _uniform_int(u[2], width - box_w + 1)
  return jnp.stack([top, left, box_h, box_w], axis=-1), _permutation(u[3])


def box_mask(shape, boxes):
  """Boolean (B, H, W, 1), true inside each image's box (top, left, height, width)."""
  _, height, width, _ = shape
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  top, left, box_h, box_w = (boxes[:, i, None, None] for i in range(4))
  inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
  return inside[..., None]


def paste_boxes(images, boxes, perm):
  """Each image with its box replaced by the same region of its partner images[perm]."""
  images = images.astype(jnp.float32)
  return jnp.where(box_mask(images.shape, boxes), images[perm], images)


def cutmix(key, images, alpha: float = 0.0):
  """CutMix on inputs only (not in the paper): paste a random box from a random batch partner."""
  boxes, perm = sample_cutmix(key, images.shape, alpha)
  return paste_boxes(images, boxes, perm)


# ----------------------------------------------------------------------------------------------
# Uniform noise images.


def replace_with_noise(images, replace, noise):
  """Images whose boolean `replace` (B,) is set become the matching image of `noise`."""
  return jnp.where(replace[:, None, None, None], noise, images.astype(jnp.float32))


def random_noise(key, images, prob: float = 0.2):
  """Replaces each image, with probability `prob`, by i.i.d. uniform noise over [0, 255]."""
  batch = images.shape[0]
  # One draw per image for the coin and one per pixel for the noise, in a single call.
  u = jax.random.uniform(key, (batch, 1 + images[0].size))
  noise = MAX_VALUE * u[:, 1:].reshape(images.shape)
  return replace_with_noise(images, u[:, 0] < prob, noise)


# ----------------------------------------------------------------------------------------------
# Policies.


def _option(cfg, name: str):
  value = DEFAULTS[name] if cfg is None else cfg[name]
  return float(value)


def _choice(cfg, name: str, choices) -> str:
  value = DEFAULTS[name] if cfg is None else cfg[name]
  if value not in choices:
    raise KdJaxError(f"augmentation option {name}={value!r} is not valid; choose one of "
                     f"{', '.join(choices)}.")
  return value


def _check_range(name: str, value: float, low: float, high: float):
  if not low <= value <= high:
    raise KdJaxError(f"augmentation option {name}={value} must lie in [{low}, {high}].")


def build_ops(cfg):
  """Single policy name -> key-taking op, with its options read from cfg (validated here)."""
  degrees = _option(cfg, "rotate_degrees")
  strength = _option(cfg, "color_jitter")
  mixup_alpha = _option(cfg, "mixup_alpha")
  cutmix_alpha = _option(cfg, "cutmix_alpha")
  noise_prob = _option(cfg, "noise_prob")
  mixup_lambda = _choice(cfg, "mixup_lambda", MIXUP_LAMBDAS)
  interpolation = _choice(cfg, "rotate_interpolation", ROTATE_INTERPOLATIONS)
  _check_range("rotate_degrees", degrees, 0.0, 180.0)
  _check_range("color_jitter", strength, 0.0, 0.5)  # hue shifts beyond half a turn are meaningless
  _check_range("mixup_alpha", mixup_alpha, 0.0, math.inf)
  _check_range("cutmix_alpha", cutmix_alpha, 0.0, math.inf)
  _check_range("noise_prob", noise_prob, 0.0, 1.0)
  return {
      "none": no_augmentation,
      "crop_flip": crop_flip,
      "flip": random_horizontal_flip,
      "crop": random_crop,
      "rotate": lambda key, x: random_rotate(key, x, degrees, interpolation),
      "vflip": random_vertical_flip,
      "color_jitter": lambda key, x: random_color_jitter(key, x, strength),
      "mixup": lambda key, x: mixup(key, x, mixup_alpha, mixup_lambda),
      "cutmix": lambda key, x: cutmix(key, x, cutmix_alpha),
      "noise": lambda key, x: random_noise(key, x, noise_prob),
  }


def make_policy(name: str, cfg=None) -> Callable:
  """Returns policy(key, images) -> float32 images in [0, 255] of the same shape.

  `name` is one of kd_jax.augment_policies.POLICY_NAMES or several joined by '+', applied left to right, each with its own
  subkey; `cfg` (config.distill, or None for DEFAULTS) supplies every option of DEFAULTS.
  """
  ops = parse_policy(name)
  builders = build_ops(cfg)
  fns = [builders[op] for op in ops]

  def policy(key, images):
    if is_token_input(images):
      if fns:
        raise KdJaxError(f"augmentation policy {name!r} transforms images; token inputs (text) need "
                         "data.augment='none' and distill.augment='' or 'none'.")
      return images
    x = images.astype(jnp.float32)
    keys = jax.random.split(key, max(len(fns), 1))
    for fn, op_key in zip(fns, keys):
      x = fn(op_key, x)
    # Bilinear weights and float rounding can overshoot by ulps; keep the documented range exact.
    return jnp.clip(x, 0.0, MAX_VALUE)

  return policy


def channel_moments(batches) -> tuple:
  """Per-channel (mean, std) of uint8 image batches (..., C) scaled to [0, 1], accumulated in float64
  batch by batch: a float32 sum over a whole dataset stops growing once it reaches 2^24, and a float64
  copy of it would take 8 bytes per pixel. The statistics `normalize` standardizes with."""
  total = total_sq = 0.0
  count = 0
  for images in batches:
    x = np.asarray(images).reshape(-1, images.shape[-1]).astype(np.float64) / MAX_VALUE
    total = total + x.sum(axis=0)
    total_sq = total_sq + np.square(x).sum(axis=0)
    count += x.shape[0]
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))


def is_token_input(x) -> bool:
  """Integer inputs other than uint8 images are token ids (kd_jax/data/text.py): policies with no
  operation and `normalize` pass them through unchanged."""
  return jnp.issubdtype(x.dtype, jnp.integer) and x.dtype != jnp.uint8


def normalize(images, mean, std, dtype=jnp.float32):
  """Images on the [0, 255] scale (uint8 or float) -> per-channel standardization in `dtype`;
  token ids (`is_token_input`) unchanged."""
  if is_token_input(images):
    return images
  return ((images.astype(jnp.float32) / MAX_VALUE - mean) / std).astype(dtype)
