"""Augmentation policies: each deterministic core against a NumPy reference, then the keyed wrappers'
distributions, composition, dtype/range/shape contracts, jit and errors."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config as kd_config
from kd_jax import augment_policies as policy
from kd_jax.data import augment
from kd_jax.errors import KdJaxError

KEY = jax.random.PRNGKey(0)


def _options(**changed):
  """config.distill, where policies read their options, with `changed` options."""
  cfg = kd_config.default_config().distill
  cfg.update(changed)
  return cfg


# Jitted handles on the ops under test: in eager mode every primitive is compiled separately for its
# shapes, which on a small CPU costs far more than one compilation of the whole op.
rotate = jax.jit(augment.rotate, static_argnames="interpolation")
random_rotate = jax.jit(augment.random_rotate, static_argnames=("max_degrees", "interpolation"))
adjust_hue = jax.jit(augment.adjust_hue)
color_jitter_apply = jax.jit(augment.color_jitter_apply)
random_color_jitter = jax.jit(augment.random_color_jitter, static_argnames="strength")
sample_mixup = jax.jit(augment.sample_mixup, static_argnames=("batch", "alpha", "lambda_per"))
mixup = jax.jit(augment.mixup, static_argnames=("alpha", "lambda_per"))
sample_cutmix = jax.jit(augment.sample_cutmix, static_argnames=("shape", "alpha"))
paste_boxes = jax.jit(augment.paste_boxes)
cutmix = jax.jit(augment.cutmix, static_argnames="alpha")
random_noise = jax.jit(augment.random_noise, static_argnames="prob")


def images_u8(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def jitted_policy(name):
  """One compiled policy per name for the whole module: compiling, not running, is what costs here
  (op-by-op eager execution compiles every primitive separately, which is slower still)."""
  return jax.jit(augment.make_policy(name))


# ---- crop and flips ---------------------------------------------------------------------------


def test_crop_core_matches_numpy_padding_and_slicing():
  x = images_u8((3, 5, 6, 2))
  offsets = np.array([[4, 4], [0, 8], [7, 1]])
  out = np.asarray(augment.crop(x, offsets, padding=4))
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i, (r, c) in enumerate(offsets):
    np.testing.assert_array_equal(out[i], padded[i, r:r + 5, c:c + 6])
  np.testing.assert_array_equal(out[0], x[0])  # offset (4, 4) is the identity


def test_flips_are_exact():
  x = images_u8((2, 3, 4, 3))
  mask = np.array([True, False])
  h = np.asarray(augment.horizontal_flip(x, mask))
  v = np.asarray(augment.vertical_flip(x, mask))
  np.testing.assert_array_equal(h[0], x[0, :, ::-1])
  np.testing.assert_array_equal(v[0], x[0, ::-1])
  np.testing.assert_array_equal(h[1], x[1])
  np.testing.assert_array_equal(v[1], x[1])


def test_random_flips_flip_about_half_and_only_as_flips():
  x = images_u8((400, 2, 3, 1))
  for fn, flipped in ((augment.random_horizontal_flip, x[:, :, ::-1]),
                      (augment.random_vertical_flip, x[:, ::-1])):
    out = np.asarray(fn(KEY, x))
    is_flipped = np.all(out == flipped, axis=(1, 2, 3)) & np.any(x != flipped, axis=(1, 2, 3))
    is_same = np.all(out == x, axis=(1, 2, 3))
    assert np.all(is_flipped | is_same)
    assert 150 < is_flipped.sum() < 250  # ~Binomial(<=400, 0.5)


# ---- rotation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", augment.ROTATE_INTERPOLATIONS)
def test_rotation_by_zero_is_identity(interpolation):
  x = images_u8((2, 5, 7, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(rotate(x, np.zeros(2), interpolation=interpolation)), x)


@pytest.mark.parametrize("size", [4, 5, 32])
def test_rotation_by_90_is_counter_clockwise_rot90(size):
  """+90 degrees equals np.rot90 over (H, W) (counter-clockwise as displayed); -90 is the reverse.

  Nearest (the original's) is exact; sin/cos of pi/2 are inexact in float32, so with bilinear a
  border pixel may blend ~1e-7 of the zero fill.
  """
  x = images_u8((3, size, size, 3)).astype(np.float32)
  angles = np.array([90.0, -90.0, 180.0])
  expected = [np.rot90(x[0], k=1, axes=(0, 1)), np.rot90(x[1], k=-1, axes=(0, 1)),
              np.rot90(x[2], k=2, axes=(0, 1))]
  nearest = np.asarray(rotate(x, angles, interpolation="nearest"))
  for out, want in zip(nearest, expected):
    np.testing.assert_array_equal(out, want)
  bilinear = np.asarray(rotate(x, angles, interpolation="bilinear"))
  for out, want in zip(bilinear, expected):
    np.testing.assert_allclose(out, want, atol=1e-3)


def test_rotation_defaults_to_the_originals_nearest_interpolation():
  x = images_u8((4, 8, 8, 3))
  angles = np.array([10.0, 33.0, -71.0, 5.0], np.float32)
  out = np.asarray(jax.jit(augment.rotate)(x.astype(np.float32), angles))
  np.testing.assert_array_equal(out, np.asarray(rotate(x.astype(np.float32), angles,
                                                       interpolation="nearest")))
  # Every output pixel is a pixel of the input or the zero fill: no blending.
  for image, rotated in zip(x, out):
    pixels = {tuple(p) for p in image.reshape(-1, 3)} | {(0, 0, 0)}
    assert {tuple(p) for p in rotated.reshape(-1, 3).astype(np.uint8)} <= pixels
  assert augment.DEFAULTS["rotate_interpolation"] == "nearest"


@pytest.mark.parametrize("shape", [(32, 32, 3), (7, 9, 1)])
def test_nearest_rotation_matches_pil_as_torchvision_calls_it(shape):
  """torchvision's RandomRotation on a PIL image (the original's data path) is PIL's rotate with
  NEAREST, zero fill, centre (w/2, h/2). float32 vs double may flip a rare exact tie."""
  image_module = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(3)
  angles = np.concatenate([[0.0, 90.0, -90.0, 180.0, 45.0], rng.uniform(-90, 90, 11)])
  x = images_u8((len(angles),) + shape, seed=4)
  out = np.asarray(rotate(x.astype(np.float32), angles.astype(np.float32),
                          interpolation="nearest"))
  for image, angle, rotated in zip(x, angles, out):
    pil = image_module.fromarray(image[..., 0] if shape[-1] == 1 else image)
    expected = np.asarray(pil.rotate(float(angle), resample=image_module.NEAREST, fillcolor=0))
    expected = expected.reshape(shape)
    differs = np.any(rotated != expected, axis=-1)
    assert differs.mean() <= 0.005, (angle, differs.sum())


def test_rotation_matches_a_numpy_bilinear_reference():
  x = images_u8((1, 6, 5, 1)).astype(np.float32)
  angle = 17.0
  out = np.asarray(rotate(x, np.array([angle]), interpolation="bilinear"))[0, ..., 0]
  img = x[0, ..., 0]
  h, w = img.shape
  t = np.deg2rad(angle)
  ref = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      dy, dx = i - (h - 1) / 2, j - (w - 1) / 2
      sr = np.sin(t) * dx + np.cos(t) * dy + (h - 1) / 2
      sc = np.cos(t) * dx - np.sin(t) * dy + (w - 1) / 2
      r0, c0 = int(np.floor(sr)), int(np.floor(sc))
      for r, wr in ((r0, 1 - (sr - r0)), (r0 + 1, sr - r0)):
        for c, wc in ((c0, 1 - (sc - c0)), (c0 + 1, sc - c0)):
          if 0 <= r < h and 0 <= c < w:
            ref[i, j] += wr * wc * img[r, c]
  np.testing.assert_allclose(out, ref, atol=1e-2)


def test_random_rotation_angles_stay_within_the_bound():
  """A single bright pixel's rotated position shows the angle; the bound 20 degrees must hold."""
  size = 21
  x = np.zeros((64, size, size, 1), np.float32)
  x[:, 10, 20] = 255.0  # on the row through the centre, 10 pixels right of it
  # Bilinear keeps the pixel's sub-pixel position (nearest would round it by up to ~3 degrees).
  out = np.asarray(random_rotate(KEY, x, 20.0, interpolation="bilinear"))[..., 0]
  rows, cols = np.mgrid[:size, :size]
  mass = out.sum(axis=(1, 2))
  dy = (out * (rows - 10)).sum(axis=(1, 2)) / mass
  dx = (out * (cols - 10)).sum(axis=(1, 2)) / mass
  angles = np.rad2deg(np.arctan2(-dy, dx))  # counter-clockwise as displayed
  assert np.all(np.abs(angles) <= 20.5)
  assert angles.max() > 10 and angles.min() < -10 and np.std(angles) > 5


# ---- colour jitter ----------------------------------------------------------------------------


def np_gray(x):
  return 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]


def test_color_jitter_with_unit_factors_and_zero_hue_is_identity():
  x = images_u8((3, 4, 4, 3)).astype(np.float32)
  ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
  order = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
  out = np.asarray(color_jitter_apply(x, ones, ones, ones, zeros, order))
  np.testing.assert_allclose(out, x, atol=1e-3)


def test_brightness_contrast_saturation_match_numpy_blends():
  x = images_u8((2, 3, 4, 3)).astype(np.float32)
  f = np.array([0.8, 1.2], np.float32)
  fb = f[:, None, None, None]
  np.testing.assert_allclose(np.asarray(augment.adjust_brightness(x, f)),
                             np.clip(fb * x, 0, 255), rtol=1e-5, atol=1e-3)
  mean = np_gray(x).mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(np.asarray(augment.adjust_contrast(x, f)),
                             np.clip(fb * x + (1 - fb) * mean, 0, 255), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(np.asarray(augment.adjust_saturation(x, f)),
                             np.clip(fb * x + (1 - fb) * np_gray(x), 0, 255), rtol=1e-5, atol=1e-3)


def test_hue_shift_of_half_a_turn_turns_red_into_cyan_and_matches_colorsys():
  import colorsys
  red = np.zeros((1, 1, 1, 3), np.float32)
  red[..., 0] = 255.0
  out = np.asarray(adjust_hue(red, np.array([0.5], np.float32)))
  np.testing.assert_allclose(out[0, 0, 0], [0.0, 255.0, 255.0], atol=1e-3)

  x = images_u8((2, 3, 3, 3)).astype(np.float32)
  shifts = np.array([0.13, -0.2], np.float32)
  out = np.asarray(adjust_hue(x, shifts))
  for b in range(2):
    for pixel, got in zip(x[b].reshape(-1, 3) / 255, out[b].reshape(-1, 3) / 255):
      h, s, v = colorsys.rgb_to_hsv(*pixel)
      np.testing.assert_allclose(got, colorsys.hsv_to_rgb((h + shifts[b]) % 1.0, s, v), atol=1e-4)


def test_color_jitter_on_one_channel_skips_saturation_and_hue():
  x = images_u8((2, 3, 3, 1)).astype(np.float32)
  f = np.array([0.5, 1.5], np.float32)
  np.testing.assert_array_equal(np.asarray(augment.adjust_saturation(x, f)), x)
  np.testing.assert_array_equal(np.asarray(adjust_hue(x, f)), x)
  out = np.asarray(random_color_jitter(KEY, x, 0.2))
  assert out.shape == x.shape and not np.allclose(out, x)


def test_color_jitter_order_is_respected_per_image():
  """Brightness then contrast differs from contrast then brightness when clipping kicks in."""
  x = images_u8((2, 4, 4, 3), seed=3).astype(np.float32)
  b = np.array([1.2, 1.2], np.float32)
  c = np.array([1.2, 1.2], np.float32)
  ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
  order = np.array([[0, 1, 2, 3], [1, 0, 2, 3]])
  out = np.asarray(color_jitter_apply(x, b, c, ones, zeros, order))
  bright_first = np.asarray(augment.adjust_contrast(augment.adjust_brightness(x, b), c))
  contrast_first = np.asarray(augment.adjust_brightness(augment.adjust_contrast(x, c), b))
  np.testing.assert_allclose(out[0], bright_first[0], atol=1e-3)
  np.testing.assert_allclose(out[1], contrast_first[1], atol=1e-3)


# ---- mixup, cutmix, noise ---------------------------------------------------------------------


@pytest.mark.parametrize("lambda_per", augment.MIXUP_LAMBDAS)
def test_mixup_is_the_drawn_convex_combination(lambda_per):
  x = images_u8((6, 3, 3, 3))
  key = jax.random.PRNGKey(4)
  lam, perm = map(np.asarray, sample_mixup(key, batch=6, lambda_per=lambda_per))
  assert sorted(perm.tolist()) == list(range(6))
  expected = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm].astype(np.float32)
  np.testing.assert_allclose(np.asarray(mixup(key, x, lambda_per=lambda_per)), expected, rtol=1e-5,
                             atol=1e-3)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_mixup_draws_one_lambda_per_batch_by_default_as_the_original(alpha):
  lam, _ = sample_mixup(KEY, batch=64, alpha=alpha)
  lam = np.asarray(lam)
  assert lam.shape == (64,) and np.all(lam == lam[0])
  assert inspect.signature(augment.sample_mixup).parameters["lambda_per"].default == "batch"
  assert inspect.signature(augment.mixup).parameters["lambda_per"].default == "batch"
  assert augment.DEFAULTS["mixup_lambda"] == "batch"


def test_mixup_per_example_option_draws_one_lambda_per_image():
  lam, _ = sample_mixup(KEY, batch=64, lambda_per="example")
  assert len(np.unique(np.asarray(lam))) == 64
  # Through the default policy every image is lam * own + (1 - lam) * partner with the same lam.
  x = images_u8((16, 3, 3, 1))
  batch_lam, perm = sample_mixup(KEY, batch=16)
  np.testing.assert_allclose(np.asarray(mixup(KEY, x)),
                             np.asarray(augment.mix(x, jnp.full((16,), batch_lam[0]), perm)),
                             atol=1e-3)


def test_mixup_lambda_distribution():
  lam, _ = sample_mixup(KEY, batch=20000, lambda_per="example")
  lam = np.asarray(lam)
  assert lam.min() >= 0 and lam.max() <= 1
  assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - 1 / 12) < 0.005  # U[0, 1]
  beta, _ = sample_mixup(KEY, batch=20000, alpha=0.2, lambda_per="example")
  beta = np.asarray(beta)
  assert abs(beta.var() - 1 / (4 * 1.4)) < 0.01  # Beta(0.2, 0.2): var = 1 / (4 (2a + 1))
  # One lambda per batch, over many batches (keys): the same distribution.
  keys = jax.random.split(KEY, 20000)
  per_batch = np.asarray(jax.jit(jax.vmap(lambda k: augment.sample_mixup(k, 2)[0][0]))(keys))
  assert abs(per_batch.mean() - 0.5) < 0.01 and abs(per_batch.var() - 1 / 12) < 0.005


def test_cutmix_pixels_come_from_image_or_partner_and_box_fraction_matches():
  shape = (64, 8, 8, 3)
  x = images_u8(shape).astype(np.float32)
  boxes, perm = map(np.asarray, sample_cutmix(KEY, shape=shape))
  out = np.asarray(paste_boxes(x, boxes, perm))
  rows, cols = np.mgrid[:8, :8]
  for i, (top, left, h, w) in enumerate(boxes):
    assert 0 <= top and top + h <= 8 and 0 <= left and left + w <= 8
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    np.testing.assert_array_equal(out[i][inside], x[perm[i]][inside])
    np.testing.assert_array_equal(out[i][~inside], x[i][~inside])
  fractions = boxes[:, 2] * boxes[:, 3] / 64.0
  assert 0.3 < fractions.mean() < 0.7  # area fraction ~ U[0, 1] up to rounding


def test_cutmix_keyed_wrapper_uses_its_draw():
  x = images_u8((5, 6, 6, 1))
  key = jax.random.PRNGKey(7)
  boxes, perm = sample_cutmix(key, shape=x.shape)
  np.testing.assert_array_equal(np.asarray(cutmix(key, x)),
                                np.asarray(paste_boxes(x, boxes, perm)))


def test_noise_replaces_about_p_of_images_with_uniform_noise():
  x = np.full((2000, 4, 4, 1), 7, np.uint8)  # a value that uniform noise never hits exactly
  out = np.asarray(random_noise(KEY, x, prob=0.2))
  replaced = np.any(out != 7, axis=(1, 2, 3))
  # Binomial(2000, 0.2): mean 400, sd ~ 18; a 5-sd bound.
  assert abs(replaced.sum() - 400) < 90
  np.testing.assert_array_equal(out[~replaced], 7)
  noise = out[replaced]
  assert abs(noise.mean() - 127.5) < 3 and noise.min() >= 0 and noise.max() <= 255
  assert abs(noise.std() - 255 / np.sqrt(12)) < 3


# ---- policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "crop_flip", "flip", "crop", "rotate", "vflip",
                                  "color_jitter", "all", "mixup", "cutmix", "noise"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_policy_jits_keeps_shape_dtype_range_and_is_keyed(name, channels):
  x = images_u8((8, 6, 6, channels))
  policy = jitted_policy(name)
  out = policy(KEY, x)
  assert out.shape == x.shape and out.dtype == jnp.float32
  out = np.asarray(out)
  assert out.min() >= 0 and out.max() <= 255
  np.testing.assert_array_equal(np.asarray(policy(KEY, x)), out)  # same key -> same result
  if name != "none":
    assert not np.array_equal(np.asarray(policy(jax.random.PRNGKey(1), x)), out)


def test_none_is_the_identity_in_float():
  x = images_u8((2, 3, 3, 3))
  np.testing.assert_array_equal(np.asarray(augment.make_policy("none")(KEY, x)), x)


def test_composition_applies_both_ops():
  x = images_u8((300, 4, 4, 1))
  out = np.asarray(jitted_policy("crop_flip+vflip")(KEY, x))
  # Some images are upside down relative to every crop/flip of the original: vflip ran.
  rows_flipped = any(np.array_equal(out[i], x[i, ::-1]) for i in range(len(x)))
  shifted = np.any(out == 0, axis=(1, 2, 3)) & np.all(x > 0, axis=(1, 2, 3))  # zero padding: crop ran
  assert rows_flipped and shifted.any()


def test_composition_is_left_to_right_with_split_keys():
  x = images_u8((8, 6, 6, 3))
  keys = jax.random.split(KEY, 3)

  @jax.jit
  def by_hand(x):
    for fn, key in zip((augment.crop_flip, augment.random_vertical_flip, augment.mixup), keys):
      x = fn(key, x)
    return x

  np.testing.assert_allclose(np.asarray(jitted_policy("crop_flip+vflip+mixup")(KEY, x)),
                             np.asarray(by_hand(x.astype(np.float32))), atol=1e-3)


def test_all_is_the_papers_combination():
  assert augment.parse_policy("all") == ("crop_flip", "rotate", "vflip", "color_jitter")
  assert augment.parse_policy("none+all+noise") == augment.parse_policy(
      "crop_flip+rotate+vflip+color_jitter+noise")


def test_config_options_are_read():
  x = images_u8((8, 6, 6, 3))
  cfg = _options(rotate_degrees=0.0, noise_prob=1.0, mixup_alpha=0.5)
  rotated = jax.jit(augment.make_policy("rotate", cfg))(KEY, x)
  np.testing.assert_array_equal(np.asarray(rotated), x)
  noise = np.asarray(jax.jit(augment.make_policy("noise", cfg))(KEY, x))
  assert not np.any(noise == x)
  with pytest.raises(KdJaxError, match="color_jitter"):
    augment.make_policy("color_jitter", _options(color_jitter=0.6))


def test_config_chooses_rotation_interpolation_and_mixup_lambda():
  x = images_u8((8, 6, 6, 3))
  options = lambda **kw: _options(rotate_degrees=30.0, **kw)
  by_name = {}
  for interpolation in augment.ROTATE_INTERPOLATIONS:
    policy = jax.jit(augment.make_policy("rotate", options(rotate_interpolation=interpolation)))
    by_name[interpolation] = np.asarray(policy(KEY, x))
  key = jax.random.split(KEY, 1)[0]  # make_policy's subkey for its single op
  degrees = jax.random.uniform(key, (8,), minval=-30.0, maxval=30.0)
  for interpolation, out in by_name.items():
    np.testing.assert_allclose(out, np.asarray(rotate(x.astype(np.float32), degrees,
                                                      interpolation=interpolation)), atol=1e-4)
  assert not np.allclose(by_name["nearest"], by_name["bilinear"])
  mixed = np.asarray(jax.jit(augment.make_policy("mixup", options(mixup_lambda="example")))(KEY, x))
  np.testing.assert_allclose(mixed, np.asarray(mixup(key, x, lambda_per="example")), atol=1e-3)
  for bad in (options(rotate_interpolation="bicubic"), options(mixup_lambda="pixel")):
    with pytest.raises(KdJaxError, match="bicubic|pixel"):
      augment.make_policy("rotate", bad)


def test_unknown_names_and_bad_options_raise_kdjaxerror():
  with pytest.raises(KdJaxError, match="valid names"):
    augment.make_policy("crop_flip+sharpen")
  with pytest.raises(KdJaxError):
    augment.make_policy("")
  with pytest.raises(KdJaxError):
    augment.make_policy("noise", _options(noise_prob=1.5))


def test_policy_names_and_normalize_accept_float_input():
  assert {"none", "crop_flip", "all", "mixup", "noise"} <= set(policy.POLICY_NAMES)
  # every single policy the names promise is built, and nothing else
  assert tuple(augment.build_ops(None)) == policy.SINGLE_POLICIES
  x = images_u8((2, 3, 3, 3))
  mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
  np.testing.assert_allclose(np.asarray(augment.normalize(x.astype(np.float32), mean, std)),
                             np.asarray(augment.normalize(x, mean, std)))
  out = jax.eval_shape(augment.make_policy("crop_flip"), KEY, x)  # traced, not compiled
  assert out.dtype == jnp.float32 and out.shape == x.shape
