"""Data options the laptop-scale reproduction suite needs: a teacher subset of N labelled examples
(teacher.train_examples) and a host-side resize (data.image_size)."""

import json

import numpy as np
import PIL.Image
import pytest

from kd_jax import KdJaxError, study
from kd_jax import config as kd_config
from kd_jax.data import sources
from kd_jax.data import placement


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


def test_pipeline_trains_the_teachers_on_the_subset_only(tmp_path, tiny):
  """64 examples at batch 32 are 2 steps per epoch: the teacher's schedule shows the subset's size."""
  tiny.teacher.steps = 0
  tiny.teacher.epochs = 3
  tiny.teacher.train_examples = 64
  tiny.log_every_steps = 1
  study.run(tiny, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  teacher_steps = [r["step"] for r in records if r.get("phase", "").startswith("teachers")
                   and "loss" in r]
  assert max(teacher_steps) == 6
  # The student still distills on every training example (1,437 digits at batch 32: 44 per epoch).
  student_epochs = [r["epoch"] for r in records if r.get("phase") == "student" and "epoch" in r]
  assert student_epochs[-1] == pytest.approx(12 / 44, abs=1e-3)


def _dataset(train, test):
  return sources.Dataset(name="x", train_images=train, train_labels=np.zeros(len(train), np.int32),
                         test_images=test, test_labels=np.zeros(len(test), np.int32), num_classes=10)


def test_resize_matches_pil_bilinear_per_image_for_gray_and_rgb():
  rng = np.random.default_rng(0)
  for channels in (1, 3):
    train = rng.integers(0, 256, (3, 32, 32, channels), dtype=np.uint8)
    test = rng.integers(0, 256, (2, 32, 32, channels), dtype=np.uint8)
    resized = sources.resize_images(_dataset(train, test), 28)
    assert resized.train_images.shape == (3, 28, 28, channels)
    assert resized.test_images.shape == (2, 28, 28, channels)
    image = train[1] if channels == 3 else train[1, ..., 0]
    expected = np.asarray(PIL.Image.fromarray(image).resize((28, 28), PIL.Image.BILINEAR))
    np.testing.assert_array_equal(resized.train_images[1].reshape(expected.shape), expected)


def test_resize_keeps_constant_images_constant_and_native_size_untouched():
  train = np.full((2, 8, 8, 1), 77, np.uint8)
  dataset = _dataset(train, train.copy())
  up = sources.resize_images(dataset, 28)
  assert up.train_images.shape == (2, 28, 28, 1) and np.all(up.train_images == 77)
  assert sources.resize_images(dataset, 0) is dataset
  assert sources.resize_images(dataset, 8) is dataset


def test_load_dataset_resizes_digits():
  cfg = kd_config.data_config(name="digits", source="digits", train_size=100, image_size=28)
  dataset = sources.load_image_dataset(cfg)
  assert dataset.train_images.shape == (100, 28, 28, 1)
  assert dataset.test_images.shape[1:] == (28, 28, 1)
