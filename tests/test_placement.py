"""kd_jax/data/placement.py: channel statistics against float64, the original's appended OOD images,
and the teacher's seeded subset of its split (teacher.train_examples)."""

import types

import numpy as np
import pytest

from kd_jax import KdJaxError
from kd_jax import config as kd_config
from kd_jax.data import placement


def test_channel_statistics_of_a_cifar_sized_array_match_float64():
  """50,000 x 32 x 32 x 3: a float32 running sum stalls at 2^24 (the mean came out 0.32768)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
  images[..., 2] //= 2  # channels with different statistics
  mean, std = placement.channel_statistics(images)
  expected_mean = np.array([images[..., c].mean(dtype=np.float64) for c in range(3)]) / 255.0
  expected_std = np.array([images[..., c].std(dtype=np.float64) for c in range(3)]) / 255.0
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
  np.testing.assert_allclose(std, expected_std, rtol=1e-10)
  assert abs(mean[0] - 127.5 / 255) < 1e-3 and abs(mean[2] - 63.5 / 255) < 1e-3


def test_normalization_statistics_do_not_depend_on_train_size():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3000, 4, 4, 3), dtype=np.uint8)
  full = placement.channel_statistics(images)
  chunked = placement.channel_statistics(images, chunk=7)  # chunk boundaries do not matter
  np.testing.assert_allclose(full, chunked, rtol=1e-12)


def test_appended_ood_images_are_a_fixed_seeded_subset():
  ood = types.SimpleNamespace(train_images=np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1))
  picked = placement.appended_ood_images(ood, 10, seed=3)
  again = placement.appended_ood_images(ood, 10, seed=3)
  np.testing.assert_array_equal(picked, again)
  assert len(np.unique(picked)) == 10  # no image twice
  assert not np.array_equal(picked.ravel(), np.arange(10))  # shuffled, not the first ten
  with pytest.raises(Exception, match="ood_examples=60"):
    placement.appended_ood_images(ood, 60, seed=3)


def test_teacher_subset_is_seeded_sorted_and_inside_its_split():
  subset = placement.split_indices(1000, "d0", split_seed=3, examples=50)
  assert subset.size == 50 and np.all(np.diff(subset) > 0)
  assert set(subset) <= set(placement.split_indices(1000, "d0", split_seed=3))
  np.testing.assert_array_equal(subset, placement.split_indices(1000, "d0", 3, examples=50))
  assert not np.array_equal(subset, placement.split_indices(1000, "d0", 4, examples=50))
  # The subset is not simply the first examples of the split.
  assert not np.array_equal(subset, placement.split_indices(1000, "d0", 3)[:50])


def test_zero_examples_keeps_the_split_and_the_halves_do_not_move():
  np.testing.assert_array_equal(placement.split_indices(10, "all", 0, examples=0), np.arange(10))
  d0 = placement.split_indices(100, "d0", 7)
  d1 = placement.split_indices(100, "d1", 7)
  assert d0.size == d1.size == 50 and not set(d0) & set(d1)


def test_too_many_teacher_examples_is_a_one_line_error():
  with pytest.raises(KdJaxError, match="train_examples=60"):
    placement.split_indices(100, "d1", 0, examples=60)
  config = kd_config.default_config()
  config.teacher.train_examples = -1
  with pytest.raises(KdJaxError, match="train_examples"):
    kd_config.validate(config)


def test_stratified_subsets_take_as_many_of_each_class_and_seeds_resample_them():
  labels = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
  subset = placement.split_indices(1000, "all", 0, 200, labels=labels)
  np.testing.assert_array_equal(np.bincount(labels[subset]), np.full(10, 20))
  again = placement.split_indices(1000, "all", 0, 200, labels=labels)
  np.testing.assert_array_equal(subset, again)
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
  fixed = ConfigDict(dict(split_seed=0, split_seed_from_seed=False))
  varied = ConfigDict(dict(split_seed=0, split_seed_from_seed=True))
  assert placement.split_seed(fixed, 3) == 0  # the old behaviour: one subset for every seed
  other = placement.split_indices(1000, "all", placement.split_seed(varied, 1), 200, labels=labels)
  assert not np.array_equal(subset, other)
  np.testing.assert_array_equal(np.bincount(labels[other]), np.full(10, 20))
  with pytest.raises(Exception, match="multiple of the 10 classes"):
    placement.split_indices(1000, "all", 0, 205, labels=labels)
