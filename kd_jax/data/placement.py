"""Putting a run's data on the devices: which train examples each phase uses, appended
out-of-distribution images, channel statistics and standardization, and the `DeviceData` the
compiled steps draw their batches from.

    dataset (host, uint8) -> split_indices (teachers' / student's part) [+ appended_ood_images]
      -> device_data(..., channel_statistics(train images)) -> DeviceData, replicated on the mesh
"""

import flax
import jax
import numpy as np

from kd_jax import parallel
from kd_jax.data import augment as augment_lib
from kd_jax.errors import KdJaxError


@flax.struct.dataclass
class DeviceData:
  """A whole small dataset, replicated on every device, as uint8 images (or int32 token ids, text) and
  int32 labels."""
  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  mean: jax.Array  # per-channel, of the training images scaled to [0, 1] (text: 0, unused)
  std: jax.Array  # (text: 1, unused)


def split_seed(data_cfg, seed: int):
  """The seed of every split draw: data.split_seed, or (data.split_seed, seed) with
  data.split_seed_from_seed (each config.seed resamples its subsets)."""
  if data_cfg.get("split_seed_from_seed", False):
    return (int(data_cfg.split_seed), int(seed))
  return data_cfg.split_seed


def _generator(seed, stream: int = None) -> np.random.Generator:
  """A NumPy generator of a split seed (an int or a tuple of ints) and an optional stream tag."""
  words = list(seed) if isinstance(seed, tuple) else [seed]
  if stream is not None:
    words.append(stream)
  return np.random.default_rng(words[0] if len(words) == 1 else words)


def stratified_subset(labels: np.ndarray, examples: int, rng: np.random.Generator) -> np.ndarray:
  """Positions of `examples` labels, the same number from each class (as scikit-learn's
  StratifiedShuffleSplit for balanced classes): examples / classes of each, drawn without
  replacement; the classes are those present in `labels`."""
  classes = np.unique(labels)
  if examples % classes.size:
    raise KdJaxError(f"config.teacher.train_examples={examples} with teacher.stratify needs a "
                     f"multiple of the {classes.size} classes.")
  per_class = examples // classes.size
  chosen = []
  for label in classes:
    members = np.flatnonzero(labels == label)
    if members.size < per_class:
      raise KdJaxError(f"class {label} has {members.size} examples, fewer than the {per_class} "
                       "teacher.stratify takes of each; lower config.teacher.train_examples.")
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.concatenate(chosen)


def split_indices(num_examples: int, split: str, split_seed, examples: int = 0, *,
                  labels: np.ndarray = None, stream: int = 1, what: str = "teacher"
                  ) -> np.ndarray:
  """Indices of 'all' the train set, or of its seeded half 'd0' or 'd1' (data recycling), sorted.

  examples > 0 keeps a seeded subset of that many of them (teacher.train_examples: a few labelled
  images; distill.train_examples: less unlabelled data, `stream` 2). The subset uses its own
  generator (the split seed and `stream`), so it does not change the d0 / d1 halves. Given the train
  `labels`, the subset is stratified (stratified_subset). `split_seed` is an int or a tuple
  (split_seed above).
  """
  if split == "all":
    indices = np.arange(num_examples)
  else:
    order = _generator(split_seed).permutation(num_examples)
    half = num_examples // 2
    indices = np.sort(order[:half] if split == "d0" else order[half:])
  if examples <= 0:
    return indices
  if examples > indices.size:
    raise KdJaxError(f"config.{what}.train_examples={examples} exceeds the {indices.size} examples "
                     f"of data split {split!r}; lower it (0 = all).")
  rng = _generator(split_seed, stream)
  if labels is not None:
    subset = stratified_subset(np.asarray(labels)[indices], examples, rng)
  else:
    subset = rng.choice(indices.size, examples, replace=False)
  return np.sort(indices[subset])


def normalization_statistics(data_cfg, images) -> tuple:
  """(mean, std) per channel that augment.normalize applies: the train images' channel_statistics
  (data.normalization 'standardize'), or 0.5 and 0.5 ('unitcube', the original's [-1, 1]: (x - 0.5)
  / 0.5 = 2 x - 1 for x in [0, 1], up to standardization's 1e-8 on std)."""
  if data_cfg.get("normalization", "standardize") == "unitcube" and images.dtype == np.uint8:
    return unitcube_statistics(images.shape[-1])
  return channel_statistics(images)


def unitcube_statistics(channels: int) -> tuple:
  """(mean, std) of 'unitcube' normalization: 0.5 and 0.5 per channel, so (x - 0.5) / 0.5 = 2 x - 1."""
  return np.full(channels, 0.5), np.full(channels, 0.5)


def appended_ood_images(ood_dataset, count: int, seed: int):
  """The original code's out-of-distribution set: `count` images of a seeded shuffle of the OOD train
  split, fixed for the whole run and appended to the distillation set (so every in-distribution image is
  still seen once per epoch)."""
  images = ood_dataset.train_images
  if count > images.shape[0]:
    raise KdJaxError(f"config.distill.ood_examples={count} exceeds the {images.shape[0]} images of "
                     "config.distill.ood_data; lower it.")
  return images[_generator(seed).permutation(images.shape[0])[:count]]


def channel_statistics(images, chunk: int = 4096):
  """Per-channel mean and standard deviation of uint8 images (N, H, W, C) scaled to [0, 1]
  (augment.channel_moments over chunks of `chunk` images; in float32, on CIFAR-10's 50,000 images
  every channel's "mean" came out 0.32768)."""
  if images.dtype != np.uint8:  # token ids (text): nothing to standardize (augment.normalize)
    return np.zeros(1), np.ones(1)
  return augment_lib.channel_moments(
      images[start:start + chunk] for start in range(0, images.shape[0], chunk))


def standardization(mean, std) -> tuple:
  """The float32 (mean, std) that augment.normalize uses, from channel statistics; 1e-8 is added to
  std so that a constant channel stays finite."""
  return np.asarray(mean).astype(np.float32), (np.asarray(std) + 1e-8).astype(np.float32)


def device_data(dataset, train_indices, mesh, statistics, *, test_size: int = 0, extra_images=None
                ) -> DeviceData:
  """The dataset on device, with `statistics`: (mean, std) of the full training set
  (`channel_statistics`), computed once for every split a run places.

  `extra_images` (out-of-distribution images without labels) are appended to the train split with
  label -1; `test_size` > 0 keeps the first test_size test examples (smoke runs).
  """
  mean, std = standardization(*statistics)
  train_images = dataset.train_images[train_indices]
  train_labels = dataset.train_labels[train_indices].astype(np.int32)
  if extra_images is not None:
    train_images = np.concatenate([train_images, extra_images])
    train_labels = np.concatenate([train_labels, np.full(len(extra_images), -1, np.int32)])
  test_end = test_size or None
  return parallel.replicate(DeviceData(
      train_images=train_images, train_labels=train_labels,
      test_images=dataset.test_images[:test_end],
      test_labels=dataset.test_labels[:test_end].astype(np.int32),
      mean=mean, std=std), mesh)
