"""Streamed input on the host, for datasets larger than memory: sources, augmentation, grain datasets.

The in-memory path (kd_jax/data/sources.py) decodes a whole dataset once and keeps it on the device.
ImageNet does not fit, so a streamed run reads its images from disk as it trains, with grain
(https://github.com/google/grain):

    records (tfds array_record, or an image folder)          -> `open_source`
      -> one global order per epoch, a fresh shuffle each epoch (grain MapDataset.shuffle + repeat)
      -> decode + random-resized crop + flip per example, seeded by (seed, position in the stream)
      -> global batch s = stream positions [s * B, (s + 1) * B); process p of P reads only its rows
         [p * B / P, (p + 1) * B / P) of it                     -> `train_batches`
      -> grain's thread pool decodes batches ahead of the step  (kd_jax/study/streamed.py feeds the device)

Element s of `train_batches` is this process's part of step s's batch, a pure function of (seed, s):
the iterator's position is one number (grain's {'next_index': s}), checkpointed with the train state,
and the batches do not depend on how many processes or devices read them. An epoch is a pass over the
stream's next N examples; batches straddle epoch boundaries, so every example is seen once per epoch.

Evaluation reads each split once in its stored order, decoded, resized and center-cropped, padded to
whole batches with rows marked invalid (`eval_batches`).

Host augmentation is the standard ImageNet recipe (torchvision's RandomResizedCrop, scale (0.08, 1),
aspect ratio (3/4, 4/3), 10 attempts then a central crop; horizontal flip with p = 0.5; evaluation:
shorter side resized to crop / 0.875, center crop). Each random op is a deterministic core taking its
draw (`sample_crop_box` draws a box, `crop_resize` applies it) so tests check boxes and pixels.
"""

import dataclasses
import io
import math
import os
import pathlib

import numpy as np
import PIL.Image

from kd_jax import config
from kd_jax.data import augment as augment_lib
from kd_jax.data import sources
from kd_jax.errors import KdJaxError

STREAMED_SOURCES = ("tfds", "image_folder")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# torchvision's RandomResizedCrop defaults.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


# ----------------------------------------------------------------------------------------------------
# Sources: random access to (encoded image or uint8 array, label) records.


@dataclasses.dataclass
class StreamSource:
  """One split, read record by record: len() and [i] -> (image bytes or uint8 array, int label)."""
  read: object  # a random-access sequence of records
  size: int  # len(read), or a prefix of it (data.train_size)
  decode: object  # record -> (uint8 (H, W, C) array, int32 label)

  def __len__(self):
    return self.size

  def __getitem__(self, index):
    return self.decode(self.read[index])


@dataclasses.dataclass
class StreamDataset:
  name: str
  train: StreamSource
  test: StreamSource
  num_classes: int
  channels: int


def decode_image(data, grayscale: bool) -> np.ndarray:
  """Encoded bytes (JPEG, PNG) or an already decoded array -> uint8 (H, W, C), C = 1 or 3."""
  if isinstance(data, (bytes, bytearray, memoryview)):
    with PIL.Image.open(io.BytesIO(data)) as image:
      mode = "L" if grayscale else "RGB"  # ImageNet has CMYK and grayscale JPEGs among its RGB ones
      array = np.asarray(image if image.mode == mode else image.convert(mode))
  else:
    array = np.asarray(data, np.uint8)
  return array[..., None] if array.ndim == 2 else array


class _Files:
  """Paths read as bytes on access (an image folder's split)."""

  def __init__(self, paths):
    self.paths = paths

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    return pathlib.Path(self.paths[index]).read_bytes()


def _folder_split(root: pathlib.Path, split: str, class_names=None):
  """(paths, labels, class names) of root/split/<class>/*.{jpg,jpeg,png}, sorted by class then name."""
  split_dir = root / split
  if not split_dir.is_dir():
    raise KdJaxError(f"data.path={str(root)!r} has no {split}/ folder: a streamed image folder is "
                     f"root/<split>/<class>/*.jpg with the splits data.train_split and "
                     f"data.test_split (e.g. train and val)")
  found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
  class_names = found if class_names is None else class_names
  if found != class_names:
    raise KdJaxError(f"{split_dir} has class folders {found[:5]}..., the train split "
                     f"{class_names[:5]}...; both splits need the same class folders")
  paths, labels = [], []
  for label, name in enumerate(class_names):
    files = sorted(f.name for f in (split_dir / name).iterdir()
                   if f.name.lower().endswith(_IMAGE_SUFFIXES) and not f.name.startswith("."))
    paths += [str(split_dir / name / f) for f in files]
    labels += [label] * len(files)
  if not paths:
    raise KdJaxError(f"{split_dir} holds no .jpg/.jpeg/.png images in class folders")
  return paths, np.asarray(labels, np.int32), class_names


def _check_folder(cfg) -> pathlib.Path:
  root = pathlib.Path(cfg.path or "").expanduser()
  if not cfg.path or not root.is_dir():
    raise KdJaxError(f"data.path={cfg.path!r} is not a folder: a streamed image_folder run reads "
                     "root/<split>/<class>/*.jpg from disk (a .tar.gz needs data.pipeline=memory)")
  return root


def _tfds_builder(cfg):
  # The in-memory loader's checks: prepared, random-access format, how to build it otherwise.
  return sources.prepared_tfds_builder(cfg.name, cfg.data_dir or None)


def _prefix(cfg, size: int) -> int:
  return sources.train_prefix_size(int(cfg.train_size), size, cfg.name or "the train split")


def open_source(cfg) -> StreamDataset:
  """The train and test splits of `cfg` (a data config, source tfds or image_folder) as records;
  a folder or file that cannot be read is one KdJaxError naming it."""
  try:
    return _open_source(cfg)
  except OSError as e:
    raise sources.read_error(e) from e


def _open_source(cfg) -> StreamDataset:
  grayscale = bool(cfg.grayscale)
  if cfg.source == "image_folder":
    root = _check_folder(cfg)
    train_paths, train_labels, class_names = _folder_split(root, cfg.train_split)
    test_paths, test_labels, _ = _folder_split(root, cfg.test_split, class_names)

    def split(paths, labels, size):
      files = _Files(paths)
      return StreamSource(read=range(len(paths)), size=size,
                          decode=lambda i: (decode_image(files[i], grayscale), labels[i]))

    return StreamDataset(
        name=cfg.name or root.resolve().name,
        train=split(train_paths, train_labels, _prefix(cfg, len(train_paths))),
        test=split(test_paths, test_labels, len(test_paths)), num_classes=len(class_names),
        channels=1 if grayscale else 3)
  if cfg.source == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = _tfds_builder(cfg)
    for split in (cfg.train_split, cfg.test_split):
      if split.split("[")[0] not in builder.info.splits:
        raise KdJaxError(f"tfds dataset {cfg.name!r} has no split {split!r} (it has "
                         f"{', '.join(builder.info.splits)}); set data.train_split / data.test_split")
    # Records come with the encoded image: decoding is ours (PIL), as for image folders.
    skip = {"image": tfds.decode.SkipDecoding()}

    def record(example):
      return decode_image(example["image"], grayscale), np.int32(example["label"])

    train = builder.as_data_source(split=cfg.train_split, decoders=skip)
    test = builder.as_data_source(split=cfg.test_split, decoders=skip)
    shape = builder.info.features["image"].shape
    channels = 1 if grayscale else 3
    if shape[-1] == 1 and not grayscale:
      channels = 3  # decoded as RGB unless data.grayscale
    return StreamDataset(
        name=cfg.name, train=StreamSource(train, _prefix(cfg, len(train)), record),
        test=StreamSource(test, len(test), record),
        num_classes=builder.info.features["label"].num_classes, channels=channels)
  raise KdJaxError(f"data.source={cfg.source!r} cannot be streamed: a streamed run reads "
                   f"{' or '.join(STREAMED_SOURCES)}; set data.pipeline=memory")


def in_memory_bytes(cfg):
  """The decoded size (uint8 bytes, train + test) of the dataset `cfg` names, or None when its
  images differ in size (they cannot be one array). Sources other than tfds and an image folder are
  small fixed formats and count as 0. A folder or file that cannot be read is one KdJaxError."""
  try:
    return _in_memory_bytes(cfg)
  except OSError as e:
    raise sources.read_error(e) from e


def _in_memory_bytes(cfg):
  if cfg.source == "tfds":
    builder = _tfds_builder(cfg)
    shape = builder.info.features["image"].shape
    if any(d is None for d in shape):
      return None
    count = sum(builder.info.splits[s.split("[")[0]].num_examples
                for s in (cfg.train_split, cfg.test_split))
    return count * int(np.prod(shape))
  if cfg.source == "image_folder" and cfg.path and pathlib.Path(cfg.path).expanduser().is_dir():
    root = pathlib.Path(cfg.path).expanduser()
    count, first, sizes = 0, None, set()
    for split in (cfg.train_split, cfg.test_split):
      for class_dir in sorted((root / split).glob("*")) if (root / split).is_dir() else ():
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(_IMAGE_SUFFIXES))
        count += len(files)
        for name in files[:2]:  # a few headers (no decoding): images of several sizes -> None
          with PIL.Image.open(class_dir / name) as image:
            sizes.add(image.size)
            first = first or image.size
    if first is None:
      return 0
    if len(sizes) > 1:
      return None
    return count * first[0] * first[1] * (1 if cfg.grayscale else 3)
  return 0


def uses_streaming(data_cfg) -> bool:
  """Whether a run streams its data: data.pipeline 'stream', or 'auto' when the decoded dataset is
  larger than data.memory_limit_mb or its images differ in size (the in-memory path holds one array)."""
  pipeline = data_cfg.pipeline
  if pipeline not in config.PIPELINES:
    raise KdJaxError(f"config.data.pipeline={pipeline!r} is not valid; choose one of "
                     f"{', '.join(config.PIPELINES)}.")
  if pipeline == "memory":
    return False
  if pipeline == "stream":
    return True
  if data_cfg.source not in STREAMED_SOURCES:
    return False
  size = in_memory_bytes(data_cfg)
  return size is None or size > data_cfg.memory_limit_mb * 2**20


# ----------------------------------------------------------------------------------------------------
# Host augmentation.


def sample_crop_box(rng: np.random.Generator, height: int, width: int, min_scale: float = 0.08,
                    ratio=CROP_RATIO, attempts: int = CROP_ATTEMPTS):
  """(top, left, h, w) of a random-resized crop, as torchvision's RandomResizedCrop.get_params.

  Up to `attempts` times: area ~ U[min_scale, 1] * H * W, log aspect ratio ~ U[log r0, log r1];
  the first box that fits is placed uniformly. Otherwise the whole image, cropped centrally to the
  nearest allowed aspect ratio.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(min_scale, 1.0)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _pil(image: np.ndarray) -> PIL.Image.Image:
  return PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil: PIL.Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(pil)
  return array.reshape(array.shape[0], array.shape[1], channels)


def crop_resize(image: np.ndarray, box, size: int) -> np.ndarray:
  """The box (top, left, h, w) of `image` resized to size x size (bilinear, PIL)."""
  top, left, h, w = box
  resized = _pil(image).resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + w, top + h))
  return _array(resized, image.shape[-1])


def center_crop(image: np.ndarray, size: int, crop_ratio: float = 0.875) -> np.ndarray:
  """Evaluation: the shorter side resized to round(size / crop_ratio) (bilinear), then the central
  size x size (offsets rounded as torchvision's CenterCrop)."""
  height, width = image.shape[:2]
  short = int(round(size / crop_ratio))
  if min(height, width) != short:
    scale = short / min(height, width)
    new_h, new_w = (short, max(short, int(round(width * scale)))) if height <= width else (
        max(short, int(round(height * scale))), short)
    image = _array(_pil(image).resize((new_w, new_h), PIL.Image.BILINEAR), image.shape[-1])
    height, width = new_h, new_w
  top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
  return np.ascontiguousarray(image[top:top + size, left:left + size])


@dataclasses.dataclass(frozen=True)
class HostAugment:
  """How a streamed run turns a decoded image into a training or evaluation example."""
  crop_size: int
  train_augment: str = "random_resized_crop_flip"
  min_crop_scale: float = 0.08
  eval_crop_ratio: float = 0.875

  def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.train_augment == "center_crop":
      return self.evaluate(image)
    box = sample_crop_box(rng, image.shape[0], image.shape[1], self.min_crop_scale)
    out = crop_resize(image, box, self.crop_size)
    if rng.random() < 0.5:
      out = out[:, ::-1]
    return np.ascontiguousarray(out)

  def evaluate(self, image: np.ndarray) -> np.ndarray:
    return center_crop(image, self.crop_size, self.eval_crop_ratio)


# ----------------------------------------------------------------------------------------------------
# grain datasets.


def stream_seeds(*keys: int):
  """(order seed, augmentation seed), uint32 each, for a stream named by integers (seed, role, ...)."""
  order, augment = np.random.SeedSequence([int(k) for k in keys]).generate_state(2)
  return int(order), int(augment)


def train_batches(source: StreamSource, augment: HostAugment, *, seeds, global_batch: int,
                  process_index: int = 0, process_count: int = 1):
  """A grain MapDataset whose element s is this process's rows of step s's batch:
  (uint8 images (B/P, S, S, C), int32 labels (B/P,)). See the module docstring."""
  import grain  # pylint: disable=g-import-not-at-top (only streamed runs need grain)
  if global_batch % process_count:
    raise KdJaxError(f"batch size {global_batch} is not divisible by the {process_count} processes")
  order_seed, augment_seed = seeds

  def example(record, rng):
    image, label = record
    return augment.train(image, rng), np.int32(label)

  stream = grain.MapDataset.source(source).shuffle(seed=order_seed).repeat()
  stream = stream.random_map(example, seed=augment_seed)
  # Micro-batch j holds stream positions [j * b, (j + 1) * b); step s's global batch is micro-batches
  # s * P .. s * P + P - 1, of which this process reads the p-th.
  local = stream.batch(global_batch // process_count, drop_remainder=True)
  return local[process_index::process_count]


def eval_batches(source: StreamSource, augment: HostAugment, *, global_batch: int,
                 process_index: int = 0, process_count: int = 1, size: int = 0):
  """(dataset, count): a grain MapDataset over the first `size` (0 = all) examples of a split, in
  stored order, and how many there are. Element j is this process's rows of global batch j,
  (images, labels); the last batch is padded with zero images (the count tells where they start)."""
  import grain  # pylint: disable=g-import-not-at-top
  count = min(size, len(source)) if size else len(source)
  padded = -(-count // global_batch) * global_batch
  shape = None

  def example(index):
    nonlocal shape
    if index < count:
      image, label = source[index]
      image = augment.evaluate(image)
      shape = image.shape
      return image, np.int32(label)
    if shape is None:  # padding rows need the shape of a real example
      shape = augment.evaluate(source[0][0]).shape
    return np.zeros(shape, np.uint8), np.int32(0)

  local = grain.MapDataset.range(padded).map(example).batch(global_batch // process_count)
  return local[process_index::process_count], count


def channel_statistics(source: StreamSource, augment: HostAugment, examples: int, seed: int,
                       threads: int):
  """Per-channel (mean, std) of evaluation crops scaled to [0, 1], over a seeded sample of
  `examples` training images (all when fewer), accumulated in float64 (as pipeline.channel_statistics
  does over a whole in-memory dataset); the same in every process."""
  import grain  # pylint: disable=g-import-not-at-top
  count = min(examples, len(source)) if examples else len(source)
  picked = np.sort(np.random.default_rng(seed).choice(len(source), count, replace=False))
  images = grain.MapDataset.source(picked.tolist()).map(
      lambda i: augment.evaluate(source[i][0])).to_iter_dataset(
          grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * max(threads, 1)))
  return augment_lib.channel_moments(images)
