"""Whole small image-classification datasets, loaded into NumPy arrays in host memory.

`load_dataset(cfg)` returns a `Dataset` (uint8 NHWC images, int32 labels) from one of these sources,
picked by `cfg.source`:

  digits:       scikit-learn's 8x8 digits (always available offline), a fixed seeded 1,437/360 split.
  cifar_pickle: the original CIFAR-10 / CIFAR-100 python pickle folders.
  idx:          MNIST-style IDX files (MNIST, Fashion-MNIST), gzipped or not.
  svhn_mat:     SVHN's cropped digits, the original train_32x32.mat / test_32x32.mat.
  image_folder: `root/{train,test}/<class>/*.{jpg,jpeg,png}`, or a tar(.gz) archive of that layout
                (read in place, never extracted); labels index the sorted class names and examples
                go round-robin over classes, so the first `train_size` are balanced.
  tfds:         a tensorflow-datasets dataset already prepared as array_record (or parquet), read
                without TensorFlow through `builder.as_data_source`.
  auto:         data.name wherever it already is (data.path, a prepared tfds copy, the download
                cache), else downloaded from its official host: kd_jax/data/download.py.
The text sources (aclimdb, tfds_text) give token ids instead: kd_jax/data/text.py.

Only data.source='auto' downloads (kd_jax/data/download.py, before a loader runs); for the other
sources a dataset that is not on disk is a `KdJaxError` that says how to provide it.
Decoded image folders are cached as .npz under `$KD_JAX_CACHE` (default `~/.cache/kd_jax`) because
decoding 60,000 JPEGs takes seconds while reading the cache takes a fraction of one; source files
and folders are only ever read.
"""

import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import time
import zipfile
import zlib

from absl import logging
import numpy as np
import PIL.Image

from kd_jax import files as files_lib
from kd_jax import progress
from kd_jax.data import download
from kd_jax.errors import KdJaxError

SOURCES = ("auto", "tfds", "cifar_pickle", "idx", "svhn_mat", "image_folder", "digits")

@dataclasses.dataclass(frozen=True)
class Dataset:
  """A whole dataset in host memory; every loader returns one, validated on construction."""

  name: str
  train_images: np.ndarray  # uint8, (N, H, W, C), C = 1 or 3
  train_labels: np.ndarray  # int32, (N,)
  test_images: np.ndarray  # uint8, (M, H, W, C)
  test_labels: np.ndarray  # int32, (M,)
  num_classes: int

  def __post_init__(self):
    for split in ("train", "test"):
      _check_split(self.name, split, getattr(self, f"{split}_images"), getattr(self, f"{split}_labels"),
                   self.num_classes)
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise KdJaxError(f"dataset {self.name!r}: train images are {self.train_images.shape[1:]} but test "
                       f"images are {self.test_images.shape[1:]}; both splits must share one image shape")


def _check_split(name, split, images, labels, num_classes):
  """Raises unless images/labels have the dtypes, layout and label range `Dataset` promises."""
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{name} {split} images must be uint8 (N, H, W, 1|3), got {images.dtype} "
                     f"{images.shape}")
  if not images.flags.c_contiguous:
    raise ValueError(f"{name} {split} images must be C-contiguous")
  if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
    raise ValueError(f"{name} {split} labels must be int32 ({len(images)},), got {labels.dtype} "
                     f"{labels.shape}")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise KdJaxError(f"dataset {name!r}: {split} labels span {labels.min()}..{labels.max()} but the "
                     f"dataset has {num_classes} classes; check the data files (or data.num_classes)")


def read_error(error: OSError) -> KdJaxError:
  """The one-line error, naming it, of a data file or folder that cannot be read (permissions)."""
  return KdJaxError(f"cannot read {error.filename or 'the data'} ({error.strerror or error}); the "
                    "data must be readable by this user: check its permissions.")


def _make_dataset(name, train_images, train_labels, test_images, test_labels, num_classes):
  """Builds a `Dataset`, converting to the exact dtypes and memory layout it promises."""
  return Dataset(
      name=name,
      train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
      train_labels=np.ascontiguousarray(train_labels, dtype=np.int32),
      test_images=np.ascontiguousarray(test_images, dtype=np.uint8),
      test_labels=np.ascontiguousarray(test_labels, dtype=np.int32),
      num_classes=int(num_classes))


def load_image_dataset(cfg, key: str = "data") -> Dataset:
  """Loads the image dataset `cfg` describes: a `kd_jax.config.data_config()` (every field and its
  default are stated there) whose source is one of SOURCES; `key` is its place in the config ('data',
  'distill.ood_data'), for messages."""
  cfg = download.resolve(cfg, key)  # data.source='auto': the source and path where data.name is
  source = cfg.source
  loaders = {
      "tfds": _load_tfds,
      "cifar_pickle": _load_cifar_pickle,
      "idx": _load_idx,
      "svhn_mat": _load_svhn_mat,
      "image_folder": _load_image_folder,
      "digits": _load_digits,
  }
  start = time.perf_counter()
  dataset = take_train_prefix(loaders[source](cfg), int(cfg.train_size or 0))
  dataset = resize_images(dataset, int(cfg.image_size or 0))
  logging.info("Loaded %s from %s in %.1fs: train %s, test %s, %d classes.", dataset.name, source,
               time.perf_counter() - start, dataset.train_images.shape, dataset.test_images.shape,
               dataset.num_classes)
  return dataset


def train_prefix_size(train_size: int, num_train: int, name: str, what: str = "examples") -> int:
  """How many training examples data.train_size keeps of `num_train` (0 = all); a one-line
  KdJaxError when it is out of range."""
  if train_size < 0 or train_size > num_train:
    raise KdJaxError(f"data.train_size={train_size} but {name} has {num_train} training {what}; "
                     f"use 0 for all of them or a number from 1 to {num_train}")
  return train_size or num_train


def take_train_prefix(dataset, train_size, inputs: str = "train_images", what: str = "examples"):
  """Keeps the first `train_size` training examples (0 keeps all); the test split is untouched.

  `inputs` names the dataclass field that holds the training inputs (text: "train_tokens").
  """
  num_train = len(dataset.train_labels)
  if train_prefix_size(train_size, num_train, dataset.name, what) == num_train:
    return dataset
  # Copies, so the full arrays can be freed instead of staying alive behind views.
  return dataclasses.replace(dataset, **{inputs: getattr(dataset, inputs)[:train_size].copy()},
                             train_labels=dataset.train_labels[:train_size].copy())


def resize_images(dataset, size: int):
  """Every image resized to size x size with PIL's bilinear filter (0 or the native size: unchanged).

  For pairing datasets of different resolutions, e.g. CIFAR-10 in grayscale at 28x28 as
  out-of-distribution images for Fashion-MNIST; runs once on the host, after train_size.
  """
  if size < 0:
    raise KdJaxError(f"data.image_size={size} must be >= 0 (0 keeps the native size).")
  if size == 0 or dataset.train_images.shape[1:3] == (size, size):
    return dataset

  def resize(images):
    channels = images.shape[-1]
    out = np.empty((images.shape[0], size, size, channels), np.uint8)
    for i, image in enumerate(images):
      # PIL takes (H, W) for one channel and (H, W, 3) for RGB.
      pil = PIL.Image.fromarray(image[..., 0] if channels == 1 else image)
      out[i] = np.asarray(pil.resize((size, size), PIL.Image.BILINEAR)).reshape(size, size, channels)
    return out

  return dataclasses.replace(dataset, train_images=resize(dataset.train_images),
                             test_images=resize(dataset.test_images))


def _dataset_name(cfg, default):
  return cfg.name or default


def existing_path(cfg, expected):
  """Returns cfg.path as an existing Path, or raises naming what should be there."""
  raw = cfg.path or ""
  name = cfg.name or ""
  fix = "; " + download.offline_howto(name, cfg=cfg)
  if not raw:
    raise KdJaxError(f"data.source={cfg.source!r} needs data.path: set --config.data.path to "
                     f"{expected}{fix}")
  path = pathlib.Path(raw).expanduser()
  if not path.exists():
    raise KdJaxError(f"data.path={raw!r} does not exist: point it at {expected}{fix}")
  return path


# ----------------------------------------------------------------------------------------------------
# digits

_DIGITS_NUM_TEST = 360


def _load_digits(cfg):
  """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255, split 1,437 train / 360 test."""
  from sklearn import datasets  # Lazy: sklearn's import is slow and only this source needs it.
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  # The legacy RandomState stream is frozen by NumPy's compatibility policy, so the split never moves.
  order = np.random.RandomState(0).permutation(len(labels))
  test, train = order[:_DIGITS_NUM_TEST], order[_DIGITS_NUM_TEST:]
  return _make_dataset(_dataset_name(cfg, "digits"), images[train], labels[train], images[test],
                       labels[test], num_classes=10)


# ----------------------------------------------------------------------------------------------------
# cifar_pickle

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR_EXPECTED = (f"a folder holding {_CIFAR10_DIR}/ (data_batch_1..5, test_batch) or {_CIFAR100_DIR}/ "
                   "(train, test), or one of those folders itself")


def _load_cifar_pickle(cfg):
  """The original CIFAR python pickles: 10 or 100 classes, decided by which files are there."""
  folder, num_classes = _find_cifar_folder(existing_path(cfg, _CIFAR_EXPECTED), cfg.name)
  if num_classes == 10:
    train = [_read_cifar_batch(folder / f, b"labels") for f in _CIFAR10_TRAIN]
    test = [_read_cifar_batch(folder / _CIFAR10_TEST, b"labels")]
  else:
    train = [_read_cifar_batch(folder / "train", b"fine_labels")]
    test = [_read_cifar_batch(folder / "test", b"fine_labels")]
  return _make_dataset(
      _dataset_name(cfg, f"cifar{num_classes}"),
      np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train]),
      np.concatenate([images for images, _ in test]), np.concatenate([labels for _, labels in test]),
      num_classes)


def _is_cifar10_folder(folder):
  return all((folder / f).is_file() for f in _CIFAR10_TRAIN + (_CIFAR10_TEST,))


def _is_cifar100_folder(folder):
  return (folder / "train").is_file() and (folder / "test").is_file()


def _find_cifar_folder(path, name):
  """Returns (folder with the pickles, 10 or 100) for `path` being that folder or its parent."""
  found = []
  for folder in (path, path / _CIFAR10_DIR, path / _CIFAR100_DIR):
    if _is_cifar10_folder(folder):
      found.append((folder, 10))
    elif _is_cifar100_folder(folder):
      found.append((folder, 100))
  wanted = {"cifar10": 10, "cifar100": 100}.get(name)
  matching = [f for f in found if wanted in (None, f[1])]
  if len(matching) == 1:
    return matching[0]
  if len(matching) > 1:
    raise KdJaxError(f"data.path={str(path)!r} holds both CIFAR-10 and CIFAR-100 pickles: set "
                     "data.name to 'cifar10' or 'cifar100', or point data.path at one of the folders")
  if found:
    raise KdJaxError(f"data.name={name!r} but data.path={str(path)!r} holds only CIFAR-{found[0][1]} "
                     f"pickles: fix data.name or point data.path at {_CIFAR_EXPECTED}")
  howto = download.offline_howto("cifar100" if name == "cifar100" else "cifar10")
  raise KdJaxError(f"no CIFAR pickles in data.path={str(path)!r}: expected {_CIFAR_EXPECTED}; {howto}")


def _read_cifar_batch(path, label_key):
  """Reads one CIFAR pickle into (uint8 NHWC images, int32 labels)."""
  try:
    with open(path, "rb") as f:
      # The official files are pickles of dicts with bytes keys; only load files you trust.
      batch = pickle.load(f, encoding="bytes")
    flat = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int32)
  except PermissionError as e:
    raise read_error(e) from e
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
    raise KdJaxError(f"{path} is not an original CIFAR python pickle ({type(e).__name__}: {e}); "
                     "re-extract it from cifar-10-python.tar.gz / cifar-100-python.tar.gz") from e
  if flat.ndim != 2 or flat.shape[1] != 3 * 32 * 32 or len(flat) != len(labels):
    raise KdJaxError(f"{path}: expected data (N, 3072) and N labels, got data {flat.shape} and "
                     f"{len(labels)} labels; re-extract it from the original CIFAR archive")
  # Rows are channel-major (1024 R, 1024 G, 1024 B), so CHW -> HWC.
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


# ----------------------------------------------------------------------------------------------------
# idx

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_IDX_EXPECTED = ", ".join(f"{stem}.gz" for stem in _IDX_STEMS.values()) + " (or uncompressed)"


def _load_idx(cfg):
  """MNIST-style IDX files (ubyte images and labels) for train and t10k."""
  folder = existing_path(cfg, f"a folder with {_IDX_EXPECTED}")
  arrays = {}
  for key, stem in _IDX_STEMS.items():
    magic = _IDX_IMAGES_MAGIC if key.endswith("images") else _IDX_LABELS_MAGIC
    arrays[key] = _read_idx(_find_idx_file(folder, stem, cfg.name), magic)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) != len(labels):
      raise KdJaxError(f"IDX files in {folder} disagree: {len(images)} {split} images but {len(labels)} "
                       "labels; re-copy the original files")
  return _make_dataset(_dataset_name(cfg, folder.resolve().name), arrays["train_images"][..., None],
                       arrays["train_labels"], arrays["test_images"][..., None], arrays["test_labels"],
                       num_classes=int(cfg.num_classes or 10))


def _find_idx_file(folder, stem, name):
  """Finds `stem` as .gz or uncompressed, also under the 'train-images.idx3-ubyte' spelling."""
  dotted = stem.replace("-idx", ".idx")
  for candidate in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
    if (folder / candidate).is_file():
      return folder / candidate
  howto = download.offline_howto(name, default="copy the 4 original IDX files there")
  raise KdJaxError(f"{stem}.gz missing from data.path={str(folder)!r}: expected {_IDX_EXPECTED}; {howto}")


def _read_bytes_maybe_gzip(path):
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] != b"\x1f\x8b":  # The gzip magic, rather than trusting the file name.
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise KdJaxError(f"{path} is a damaged gzip file ({e}); re-copy the original file") from e


def _read_idx(path, expected_magic):
  """Parses an IDX file of unsigned bytes: a big-endian magic, one uint32 per dimension, the data."""
  raw = _read_bytes_maybe_gzip(path)
  ndim = expected_magic & 0xFF
  header_size = 4 * (1 + ndim)
  magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if magic != expected_magic:
    raise KdJaxError(f"{path}: bad IDX magic number {magic} (expected {expected_magic}); is it the "
                     "original MNIST-style IDX file (images 2051, labels 2049), not renamed or cut short?")
  if len(raw) < header_size:
    raise KdJaxError(f"{path}: IDX header is truncated; re-copy the original file")
  dims = tuple(int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(1, ndim + 1))
  if len(raw) - header_size != int(np.prod(dims)):
    raise KdJaxError(f"{path}: IDX header says {dims} = {int(np.prod(dims))} bytes of data but the file "
                     f"has {len(raw) - header_size}; re-copy the original file")
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


# ----------------------------------------------------------------------------------------------------
# svhn_mat

_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _load_svhn_mat(cfg):
  """SVHN's cropped digits from the original MATLAB files: X (32, 32, 3, N) uint8 and y (N, 1) with
  labels 1..10, 10 standing for the digit 0 (mapped to 0, so labels are the digits, as in tfds)."""
  folder = existing_path(cfg, f"a folder with {' and '.join(_SVHN_FILES)}")
  (train_images, train_labels), (test_images, test_labels) = (
      _read_svhn_mat(folder / name, cfg.name) for name in _SVHN_FILES)
  return _make_dataset(_dataset_name(cfg, "svhn_cropped"), train_images, train_labels, test_images,
                       test_labels, num_classes=10)


def _read_svhn_mat(path, name):
  """One SVHN .mat file as (uint8 NHWC images, int32 labels 0..9)."""
  import scipy.io  # pylint: disable=g-import-not-at-top (lazy: only this source needs scipy.io)
  if not path.is_file():
    howto = download.offline_howto(name or "svhn_cropped")
    raise KdJaxError(f"{path.name} missing from {path.parent}: expected "
                     f"{' and '.join(_SVHN_FILES)}; {howto}")
  try:
    mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    images, labels = mat["X"], np.asarray(mat["y"]).reshape(-1)
  except PermissionError as e:
    raise read_error(e) from e
  except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
    raise KdJaxError(f"{path} is not SVHN's original {path.name} ({type(e).__name__}: {e}); "
                     "re-copy it") from e
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3 or (
      images.shape[3] != len(labels)):
    raise KdJaxError(f"{path}: expected X uint8 (32, 32, 3, N) and N labels, got X {images.dtype} "
                     f"{images.shape} and {len(labels)} labels; re-copy the original file")
  if len(labels) and (labels.min() < 1 or labels.max() > 10):
    raise KdJaxError(f"{path}: labels span {labels.min()}..{labels.max()}, not SVHN's 1..10; "
                     "re-copy the original file")
  return np.transpose(images, (3, 0, 1, 2)), (labels % 10).astype(np.int32)


# ----------------------------------------------------------------------------------------------------
# image_folder

_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_IMAGE_FOLDER_EXPECTED = ("a folder (or .tar.gz of one) laid out as train/<class>/*.jpg|png and "
                          "test/<class>/...")
_CACHE_FORMAT_VERSION = 1


def cache_dir():
  """Where decoded datasets are cached: $KD_JAX_CACHE, else $XDG_CACHE_HOME/kd_jax, else ~/.cache/kd_jax."""
  if os.environ.get("KD_JAX_CACHE"):
    return pathlib.Path(os.environ["KD_JAX_CACHE"]).expanduser()
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "kd_jax"


def _load_image_folder(cfg):
  """train/<class>/<image> and test/<class>/<image> from a folder or a tar archive, cached decoded."""
  path = existing_path(cfg, _IMAGE_FOLDER_EXPECTED)
  grayscale = bool(cfg.grayscale)
  if path.is_dir():
    listing = _list_folder_images(path)
    fingerprint = _folder_fingerprint(listing)
    list_images = lambda: listing
  elif path.name.lower().endswith(_TAR_SUFFIXES) and tarfile.is_tarfile(path):
    stat = path.stat()
    fingerprint = (stat.st_size, stat.st_mtime_ns)
    list_images = lambda: _list_tar_images(path)
  else:
    raise KdJaxError(f"data.path={str(path)!r} is neither a folder nor a tar archive: point it at "
                     f"{_IMAGE_FOLDER_EXPECTED}")
  key = repr((_CACHE_FORMAT_VERSION, str(path.resolve()), grayscale, fingerprint))

  def decode():
    print(f"[data] reading and decoding the images of {path}", flush=True)
    return _decode_listing(list_images(), grayscale, path)

  arrays = _cached_arrays(path, key, decode, use_cache=bool(cfg.cache))
  return _make_dataset(_dataset_name(cfg, _strip_tar_suffix(path.resolve().name)), arrays["train_images"],
                       arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
                       int(arrays["num_classes"]))


def _strip_tar_suffix(name):
  for suffix in _TAR_SUFFIXES:
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


def _is_image_name(file_name):
  return file_name.lower().endswith(_IMAGE_SUFFIXES) and not file_name.startswith(".")


def _list_folder_images(root):
  """{split: {class: [(relative name, path)]}} for the image files of an image folder."""
  listing = {}
  for split in _SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      raise KdJaxError(f"data.path={str(root)!r} has no {split}/ folder: expected {_IMAGE_FOLDER_EXPECTED}")
    listing[split] = {
        class_dir.name: [(f"{split}/{class_dir.name}/{f.name}", f) for f in class_dir.iterdir()
                         if _is_image_name(f.name) and f.is_file()]
        for class_dir in split_dir.iterdir() if class_dir.is_dir() and not class_dir.name.startswith(".")}
  return listing


def _folder_fingerprint(listing):
  """Every image's name, size and mtime: changes whenever a file is added, removed or rewritten."""
  entries = []
  for split, per_class in listing.items():
    for class_name, files in per_class.items():
      for relative_name, file_path in files:
        stat = file_path.stat()
        entries.append((relative_name, stat.st_size, stat.st_mtime_ns))
  return sorted(entries)


def _list_tar_images(archive):
  """{split: {class: [(relative name, bytes)]}} read in one pass over the archive, without extracting it.

  Members named [prefix/]{train,test}/<class>/<image> count; anything else (folders, other files,
  dot-files such as macOS '._x.jpg') is skipped.
  """
  listing = {split: {} for split in _SPLITS}
  seen = set()
  try:
    with tarfile.open(archive, "r:*") as tar:
      for member in tar:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if not member.isfile() or len(parts) < 3 or parts[-3] not in _SPLITS:
          continue
        if not _is_image_name(parts[-1]):
          continue
        split, class_name, file_name = parts[-3:]
        relative_name = f"{split}/{class_name}/{file_name}"
        if relative_name in seen:
          raise KdJaxError(f"{archive} has {relative_name} twice (under different top folders); keep "
                           "one train/ and one test/ folder in the archive")
        seen.add(relative_name)
        listing[split].setdefault(class_name, []).append((relative_name, tar.extractfile(member).read()))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise KdJaxError(f"cannot read the tar archive {archive} ({e}); re-copy it") from e
  for split in _SPLITS:
    if not listing[split]:
      raise KdJaxError(f"{archive} has no {split}/<class>/<image> members: expected "
                       f"{_IMAGE_FOLDER_EXPECTED}")
  return listing


def _decode_listing(listing, grayscale, where):
  """Decodes a listing into arrays; labels index the sorted class names, shared by both splits."""
  class_names = sorted(listing["train"])
  if sorted(listing["test"]) != class_names:
    raise KdJaxError(f"{where}: train/ and test/ must have the same class folders, got "
                     f"{class_names} and {sorted(listing['test'])}")
  start = time.perf_counter()
  arrays = {"num_classes": np.asarray(len(class_names))}
  for split in _SPLITS:
    per_class = [sorted(listing[split][name], key=lambda item: item[0]) for name in class_names]
    labels, sources = _interleave_classes(per_class)
    if not labels:
      raise KdJaxError(f"{where}: {split}/ has class folders but no .jpg/.jpeg/.png images in them")
    arrays[f"{split}_images"] = _decode_images(sources, "L" if grayscale else "RGB", where, split)
    arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int32)
  decoded = len(arrays["train_labels"]) + len(arrays["test_labels"])
  print(f"[data] decoded {decoded} images of {where} in {time.perf_counter() - start:.1f}s",
        flush=True)
  if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
    raise KdJaxError(f"{where}: train images are {arrays['train_images'].shape[1:3]} but test images are "
                     f"{arrays['test_images'].shape[1:3]}; resize them to one size")
  return arrays


def _interleave_classes(per_class):
  """Orders examples round-robin over classes, so any prefix (data.train_size) is close to balanced."""
  labels, sources = [], []
  for rank in range(max((len(files) for files in per_class), default=0)):
    for label, files in enumerate(per_class):
      if rank < len(files):
        labels.append(label)
        sources.append(files[rank])
  return labels, sources


def _decode_images(sources, mode, where, split=""):
  """Decodes [(relative name, bytes or path)] into one uint8 (N, H, W, C) array; all must share one size.

  Prints a progress line for `split` every progress.PROGRESS_SECONDS.

  Serial on purpose: measured on CIFAR-10 (60k 32x32 JPEGs, 2 cores), PIL holds the GIL so a thread
  pool was slower than one thread (12s vs 7s), and a process pool saved only ~25% while forking a
  process that may already run JAX threads.
  """
  first = _decode_image(*sources[0], mode, where)
  images = np.empty((len(sources),) + first.shape, dtype=np.uint8)
  images[0] = first
  started = last_report = time.perf_counter()
  for i in range(1, len(sources)):
    if time.perf_counter() - last_report > progress.PROGRESS_SECONDS:
      last_report = time.perf_counter()
      rate = i / max(last_report - started, 1e-9)
      print(f"[data] decoding {split} images: {i}/{len(sources)}, {rate:.0f} img/s, "
            f"ETA {(len(sources) - i) / rate:.0f}s", flush=True)
    image = _decode_image(*sources[i], mode, where)
    if image.shape != first.shape:
      raise KdJaxError(f"{where}: images must all have one size, but {sources[0][0]} is "
                       f"{first.shape[1]}x{first.shape[0]} and {sources[i][0]} is "
                       f"{image.shape[1]}x{image.shape[0]}; resize them first")
    images[i] = image
  return images


def _decode_image(relative_name, source, mode, where):
  try:
    with PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image = image if image.mode == mode else image.convert(mode)
      array = np.asarray(image)
  except PermissionError as e:
    raise read_error(e) from e
  except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for unreadable images.
    raise KdJaxError(f"{where}: cannot decode image {relative_name} ({e}); remove or replace it") from e
  return array[..., None] if array.ndim == 2 else array


def _cached_arrays(source_path, key, build, use_cache):
  """Returns build() through an .npz cache named by a hash of `key` (which must change with the data)."""
  if not use_cache:
    return build()
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  path = cache_dir() / "image_folder" / f"{_strip_tar_suffix(source_path.resolve().name)}-{digest}.npz"
  return cached_npz(path, build, f"the decoded images of {source_path}")


def cached_npz(path, build, what: str) -> dict:
  """The arrays of the .npz at `path`, or build()'s, written there for next time.

  An unreadable cache file is ignored (and rebuilt). The file is written atomically (temporary file +
  rename), so a crash or a concurrent run never sees half of one; a read-only or full cache only
  costs speed next time, since the data are already in memory.
  """
  if path.is_file():
    try:
      with np.load(path, allow_pickle=False) as cached:
        arrays = {name: cached[name] for name in cached.files}
      print(f"[data] read {what} from the cache {path}", flush=True)
      return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("Ignoring the unreadable cache %s (%s); building it again.", path, e)
  arrays = build()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files_lib.atomic_path(str(path)) as temporary:
      with open(temporary, "wb") as f:
        np.savez(f, **arrays)
    print(f"[data] cached {what} in {path}", flush=True)
  except OSError as e:
    logging.warning("Could not write the cache %s (%s); set KD_JAX_CACHE to a writable folder.", path, e)
  return arrays


# ----------------------------------------------------------------------------------------------------
# tfds

_TFDS_READ_CHUNK = 4096
_TFDS_CATALOG = "https://www.tensorflow.org/datasets/catalog"


def _load_tfds(cfg):
  """A tfds dataset already prepared as array_record (or parquet) in data_dir, read without TensorFlow."""
  name = cfg.name
  data_dir = cfg.data_dir or None
  builder = prepared_tfds_builder(name, data_dir)
  splits = [cfg.train_split, cfg.test_split]
  for split in splits:
    if split.split("[")[0] not in builder.info.splits:  # 'train[:90%]' slices are fine too.
      raise KdJaxError(f"tfds dataset {name!r} has no split {split!r} (it has "
                       f"{', '.join(builder.info.splits)}); set data.train_split / data.test_split")
  num_classes = builder.info.features["label"].num_classes
  (train_images, train_labels), (test_images, test_labels) = (
      _read_tfds_split(builder.as_data_source(split=split))
      for split in splits)
  return _make_dataset(name, train_images, train_labels, test_images, test_labels, num_classes)


def prepared_tfds_builder(name, data_dir):
  """Returns the tfds builder for `name`, or raises saying how to provide the prepared files."""
  try:
    import tensorflow_datasets as tfds  # Lazy: only this source needs tfds, and its import is slow.
  except ImportError as e:
    raise KdJaxError("data.source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets") from e
  if not name:
    raise KdJaxError("data.source='tfds' needs data.name, e.g. --config.data.name=cifar10")
  howto = download.tfds_howto(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise KdJaxError(f"tfds has no dataset {name!r} and none is prepared in data.data_dir={data_dir!r}: "
                     f"check the name against {_TFDS_CATALOG} or {howto}") from e
  if not builder.is_prepared():
    raise KdJaxError(f"tfds dataset {name!r} is not prepared at {builder.data_dir} and will not be "
                     "downloaded: " + howto)
  formats = builder.info.available_file_formats()
  if not formats & tfds.core.file_adapters.FileFormat.with_random_access():
    raise KdJaxError(f"tfds dataset {name!r} at {builder.data_dir} is stored as "
                     f"{', '.join(sorted(f.value for f in formats))}, which kd_jax does not read "
                     "(it reads array_record or parquet, without TensorFlow): rebuild it into "
                     f"another data_dir: {download.tfds_build_howto(name)}")
  return builder


def _read_tfds_split(source):
  """Reads every record of a tfds data source into (uint8 NHWC images, int32 labels)."""
  num = len(source)
  images = labels = None
  for start in range(0, num, _TFDS_READ_CHUNK):
    examples = source.__getitems__(list(range(start, min(start + _TFDS_READ_CHUNK, num))))
    if images is None:
      first = np.asarray(examples[0]["image"])
      shape = first.shape + (1,) if first.ndim == 2 else first.shape
      images = np.empty((num,) + shape, dtype=np.uint8)
      labels = np.empty((num,), dtype=np.int32)
    for i, example in enumerate(examples, start):
      images[i] = np.reshape(example["image"], shape)
      labels[i] = example["label"]
  if images is None:
    raise KdJaxError("a tfds split is empty; rebuild the dataset")
  return images, labels
