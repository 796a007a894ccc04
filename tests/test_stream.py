"""kd_jax/data/stream.py on a tiny generated dataset (conftest's `layouts`): host crops against
direct computations, batches as a function of the step split over processes, both layouts, the auto
pipeline, and the stream benchmark's reader."""

import numpy as np
import PIL.Image

from conftest import stream_data_cfg
from kd_jax.data import stream


def test_crop_boxes_lie_inside_the_image_and_respect_scale_and_ratio():
  rng = np.random.default_rng(0)
  for height, width in ((64, 64), (48, 80), (300, 20), (20, 300), (7, 5)):
    for _ in range(200):
      top, left, h, w = stream.sample_crop_box(rng, height, width)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
  # A sampled (not fallback) box has an area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3],
  # up to rounding; the extreme shapes above fall back to a central crop of the allowed ratio.
  for _ in range(200):
    top, left, h, w = stream.sample_crop_box(rng, 100, 100)
    assert 0.08 * 1e4 * 0.8 <= h * w <= 1e4 and 0.7 <= w / h <= 1.4
  assert stream.sample_crop_box(rng, 300, 20) == ((300 - 27) // 2, 0, 27, 20)


def test_crop_flip_and_center_crop_match_numpy():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  # A box of the output's size is cut out unchanged.
  np.testing.assert_array_equal(stream.crop_resize(image, (3, 7, 16, 16), 16), image[3:19, 7:23])
  # The training transform is the sampled box, resized, then flipped with p = 0.5: replayed here from
  # the same generator state.
  augment = stream.HostAugment(crop_size=16, min_crop_scale=0.08)
  flips = 0
  for seed in range(20):
    out = augment.train(image, np.random.default_rng(seed))
    replay = np.random.default_rng(seed)
    box = stream.sample_crop_box(replay, 40, 50, 0.08)
    expected = stream.crop_resize(image, box, 16)
    flipped = replay.random() < 0.5
    flips += flipped
    np.testing.assert_array_equal(out, expected[:, ::-1] if flipped else expected)
  assert 0 < flips < 20
  # Center crop when the shorter side already has the resize length (round(16 / 0.5) = 32).
  short = rng.integers(0, 256, (32, 45, 1), dtype=np.uint8)
  top, left = int(round((32 - 16) / 2)), int(round((45 - 16) / 2))
  np.testing.assert_array_equal(stream.center_crop(short, 16, 0.5), short[top:top + 16, left:left + 16])
  # Otherwise resized first: shorter side 40 -> 32, the other 50 -> 40.
  resized = np.asarray(PIL.Image.fromarray(image).resize((40, 32), PIL.Image.BILINEAR))
  np.testing.assert_array_equal(stream.center_crop(image, 16, 0.5), resized[8:24, 12:28])


def test_batches_are_a_function_of_the_step_and_split_over_processes(layouts):
  source = stream.open_source(stream_data_cfg(layouts["image_folder"])).train
  augment = stream.HostAugment(crop_size=16)
  one = stream.train_batches(source, augment, seeds=(1, 2), global_batch=8)
  halves = [stream.train_batches(source, augment, seeds=(1, 2), global_batch=8, process_index=p,
                                 process_count=2) for p in (0, 1)]
  labels = []
  for step in range(10):  # two epochs of 5 steps
    images, step_labels = one[step]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.concatenate([h[step][0] for h in halves]))
    labels.append(step_labels)
  # Each epoch is a permutation of the 40 examples (4 per class), each epoch a different one.
  first, second = np.concatenate(labels[:5]), np.concatenate(labels[5:])
  assert np.bincount(first).tolist() == [4] * 10 == np.bincount(second).tolist()
  assert not np.array_equal(first, second)


def test_tfds_and_folder_layouts_hold_the_same_examples(layouts):
  folder = stream.open_source(stream_data_cfg(layouts["image_folder"]))
  tfds_source = stream.open_source(stream_data_cfg(layouts["tfds"]))
  assert len(folder.train) == len(tfds_source.train) == 40 and tfds_source.num_classes == 10

  def key(split):
    return sorted((bytes(split[i][0]), int(split[i][1])) for i in range(len(split)))

  assert key(folder.test) == key(tfds_source.test)


def test_auto_pipeline_streams_images_of_varying_size(layouts):
  cfg = stream_data_cfg(layouts["tfds"])
  cfg.pipeline = "auto"
  assert stream.in_memory_bytes(cfg) is None and stream.uses_streaming(cfg)
  folder = stream_data_cfg(layouts["image_folder"])
  assert stream.in_memory_bytes(folder) is None  # images of several sizes
  cfg.source, cfg.pipeline = "digits", "auto"
  assert not stream.uses_streaming(cfg)


def test_stream_benchmark_reads_its_jpegs(tmp_path):
  from benchmarks import stream as stream_benchmark
  stream_benchmark.write_jpegs(str(tmp_path), 20, 24, classes=4)
  assert stream_benchmark.input_rate(str(tmp_path), 16, 8, threads=2, batches=2) > 0
