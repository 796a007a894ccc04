"""Tests for kd_jax.data.sources: every source on small files written here in the original format.

Tests on the real datasets in ../shared/data skip when that folder is absent; the full 60k-image
CIFAR-10 JPEG decode runs only with KD_JAX_SLOW_TESTS=1.
"""

import gzip
import io
import os
import pathlib
import pickle
import struct
import tarfile

import numpy as np
import PIL.Image
import pytest

from kd_jax import config as kd_config
from kd_jax import data, progress
from kd_jax.data import sources
from kd_jax.errors import KdJaxError

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cfg(**fields):
  """A data config as experiments make them: data_config(), no name or source, then `fields`."""
  return kd_config.data_config(**{"name": "", "source": "", **fields})


def _load_error(cfg):
  """Returns the KdJaxError message load_dataset raises for cfg, checking it is one line."""
  with pytest.raises(KdJaxError) as info:
    data.load_dataset(cfg)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def _assert_well_formed(dataset):
  for images, labels in ((dataset.train_images, dataset.train_labels),
                         (dataset.test_images, dataset.test_labels)):
    assert images.dtype == np.uint8 and images.ndim == 4 and images.flags.c_contiguous
    assert labels.dtype == np.int32 and labels.shape == images.shape[:1]


# ----------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_split_and_determinism():
  first = data.load_dataset(_cfg(name="digits", source="digits"))
  second = data.load_dataset(_cfg(source="digits"))
  _assert_well_formed(first)
  assert first.name == second.name == "digits" and first.num_classes == 10
  assert first.train_images.shape == (1437, 8, 8, 1) and first.test_images.shape == (360, 8, 8, 1)
  assert first.train_images.min() == 0 and first.train_images.max() == 255
  allowed = {round(v * 255 / 16) for v in range(17)}
  assert set(np.unique(np.concatenate([first.train_images.ravel(), first.test_images.ravel()]))) <= allowed
  np.testing.assert_array_equal(first.train_images, second.train_images)
  np.testing.assert_array_equal(first.test_labels, second.test_labels)
  # The split is a permutation of scikit-learn's 1,797 examples: no duplicates, none lost.
  from sklearn import datasets
  digits = datasets.load_digits()
  expected = np.round(digits.images * 255 / 16).astype(np.uint8).reshape(len(digits.images), -1)
  ours = np.concatenate([first.train_images, first.test_images]).reshape(len(expected), -1)
  ours_labels = np.concatenate([first.train_labels, first.test_labels])
  key = lambda images, labels: sorted(zip(map(bytes, images), labels.tolist()))
  assert key(ours, ours_labels) == key(expected, digits.target)


def test_train_size_keeps_a_prefix_and_rejects_too_many():
  full = data.load_dataset(_cfg(source="digits"))
  small = data.load_dataset(_cfg(source="digits", train_size=200))
  np.testing.assert_array_equal(small.train_images, full.train_images[:200])
  np.testing.assert_array_equal(small.train_labels, full.train_labels[:200])
  np.testing.assert_array_equal(small.test_images, full.test_images)
  _assert_well_formed(small)
  message = _load_error(_cfg(source="digits", train_size=5000))
  assert "data.train_size=5000" in message and "1437" in message


# ----------------------------------------------------------------------------------------------------
# errors common to all sources


def test_unknown_source_lists_the_valid_ones():
  message = _load_error(_cfg(name="cifar10", source="cifar"))
  assert "'cifar'" in message
  for source in sources.SOURCES:
    assert source in message


def test_missing_path_says_how_to_provide_the_data(tmp_path):
  message = _load_error(_cfg(name="cifar100", source="cifar_pickle", path=str(tmp_path / "nope")))
  assert "does not exist" in message and "cifar-100-python.tar.gz" in message
  message = _load_error(_cfg(name="mnist", source="idx"))
  assert "data.path" in message and "train-images-idx3-ubyte.gz" in message
  message = _load_error(_cfg(name="cifar10", source="image_folder", path=str(tmp_path)))
  assert "train/" in message


# ----------------------------------------------------------------------------------------------------
# cifar_pickle


def _write_pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)


def _cifar_rows(rng, n):
  return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _chw_rows_to_nhwc(rows):
  return np.stack([row.reshape(3, 32, 32).transpose(1, 2, 0) for row in rows])


def _write_cifar10(root, rng, per_batch=2, num_test=3):
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  rows, labels = [], []
  for i in range(1, 6):
    batch_rows, batch_labels = _cifar_rows(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
    _write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": batch_rows,
                                               b"labels": batch_labels, b"filenames": [b"f"] * per_batch})
    rows.append(batch_rows)
    labels += batch_labels
  test_rows, test_labels = _cifar_rows(rng, num_test), [9, 0, 4][:num_test]
  _write_pickle(folder / "test_batch", {b"data": test_rows, b"labels": test_labels})
  _write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10})
  return folder, np.concatenate(rows), np.asarray(labels), test_rows, np.asarray(test_labels)


def test_cifar10_pickle_round_trips_to_nhwc(tmp_path):
  folder, rows, labels, test_rows, test_labels = _write_cifar10(tmp_path, np.random.default_rng(0))
  for path in (tmp_path, folder):  # The parent folder or the pickle folder itself.
    dataset = data.load_dataset(_cfg(source="cifar_pickle", path=str(path)))
    _assert_well_formed(dataset)
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.train_images.shape == (10, 32, 32, 3) and dataset.test_images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(dataset.train_images, _chw_rows_to_nhwc(rows))
    np.testing.assert_array_equal(dataset.train_labels, labels)
    np.testing.assert_array_equal(dataset.test_images, _chw_rows_to_nhwc(test_rows))
    np.testing.assert_array_equal(dataset.test_labels, test_labels)
  # Pixel (row 0, col 1) of the red plane is byte 1 of the row; of the blue plane, byte 2048 + 1.
  assert dataset.train_images[0, 0, 1, 0] == rows[0, 1]
  assert dataset.train_images[0, 0, 1, 2] == rows[0, 2049]


def _write_cifar100(root, rng):
  folder = root / "cifar-100-python"
  folder.mkdir(parents=True)
  train_rows, test_rows = _cifar_rows(rng, 4), _cifar_rows(rng, 2)
  train_labels, test_labels = [0, 99, 42, 7], [99, 3]
  _write_pickle(folder / "train", {b"data": train_rows, b"fine_labels": train_labels,
                                   b"coarse_labels": [0, 19, 5, 1]})
  _write_pickle(folder / "test", {b"data": test_rows, b"fine_labels": test_labels,
                                  b"coarse_labels": [19, 2]})
  _write_pickle(folder / "meta", {b"fine_label_names": [b"apple"] * 100})
  return folder, train_rows, train_labels, test_rows, test_labels


def test_cifar100_pickle_uses_fine_labels(tmp_path):
  rng = np.random.default_rng(1)
  folder, train_rows, train_labels, test_rows, test_labels = _write_cifar100(tmp_path, rng)
  dataset = data.load_dataset(_cfg(name="cifar100", source="cifar_pickle", path=str(tmp_path)))
  _assert_well_formed(dataset)
  assert dataset.name == "cifar100" and dataset.num_classes == 100
  np.testing.assert_array_equal(dataset.train_images, _chw_rows_to_nhwc(train_rows))
  np.testing.assert_array_equal(dataset.train_labels, train_labels)
  np.testing.assert_array_equal(dataset.test_images, _chw_rows_to_nhwc(test_rows))
  np.testing.assert_array_equal(dataset.test_labels, test_labels)
  assert data.load_dataset(_cfg(source="cifar_pickle", path=str(folder))).num_classes == 100


def test_cifar_pickle_errors(tmp_path):
  rng = np.random.default_rng(2)
  _write_cifar10(tmp_path, rng)
  message = _load_error(_cfg(name="cifar100", source="cifar_pickle", path=str(tmp_path)))
  assert "only CIFAR-10" in message
  _write_cifar100(tmp_path, rng)
  assert "set data.name" in _load_error(_cfg(source="cifar_pickle", path=str(tmp_path)))
  chosen = data.load_dataset(_cfg(name="cifar100", source="cifar_pickle", path=str(tmp_path)))
  assert chosen.num_classes == 100
  empty = tmp_path / "empty"
  empty.mkdir()
  message = _load_error(_cfg(name="cifar100", source="cifar_pickle", path=str(empty)))
  assert "cifar-100-python" in message and "cs.toronto.edu" in message
  broken = tmp_path / "broken" / "cifar-10-batches-py"
  broken.mkdir(parents=True)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    (broken / name).write_bytes(b"not a pickle")
  assert "not an original CIFAR python pickle" in _load_error(_cfg(source="cifar_pickle", path=str(broken)))


# ----------------------------------------------------------------------------------------------------
# idx


def _idx_bytes(array, magic):
  return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_idx_folder(folder, rng, compress=True):
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {
      "train-images-idx3-ubyte": (rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), 2051),
      "train-labels-idx1-ubyte": (np.array([3, 1, 4, 1, 5], np.uint8), 2049),
      "t10k-images-idx3-ubyte": (rng.integers(0, 256, (2, 6, 4), dtype=np.uint8), 2051),
      "t10k-labels-idx1-ubyte": (np.array([9, 2], np.uint8), 2049),
  }
  for stem, (array, magic) in arrays.items():
    raw = _idx_bytes(array, magic)
    if compress:
      (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
    else:
      (folder / stem).write_bytes(raw)
  return {stem: array for stem, (array, _) in arrays.items()}


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
  arrays = _write_idx_folder(tmp_path / "mnist", np.random.default_rng(3), compress)
  dataset = data.load_dataset(_cfg(name="mnist", source="idx", path=str(tmp_path / "mnist")))
  _assert_well_formed(dataset)
  assert dataset.name == "mnist" and dataset.num_classes == 10
  assert dataset.train_images.shape == (5, 6, 4, 1) and dataset.test_images.shape == (2, 6, 4, 1)
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(dataset.train_labels, [3, 1, 4, 1, 5])
  np.testing.assert_array_equal(dataset.test_images[..., 0], arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(dataset.test_labels, [9, 2])


def test_idx_rejects_bad_magic_truncation_and_missing_files(tmp_path):
  folder = tmp_path / "mnist"
  _write_idx_folder(folder, np.random.default_rng(4))
  labels_file = folder / "train-labels-idx1-ubyte.gz"
  labels_file.write_bytes(gzip.compress(_idx_bytes(np.array([1, 2, 3, 4, 5], np.uint8), 2051)))
  message = _load_error(_cfg(name="mnist", source="idx", path=str(folder)))
  assert "bad IDX magic number 2051" in message and "expected 2049" in message
  labels_file.write_bytes(gzip.compress(_idx_bytes(np.array([1, 2, 3, 4, 5], np.uint8), 2049)[:-1]))
  assert "IDX header says" in _load_error(_cfg(name="mnist", source="idx", path=str(folder)))
  labels_file.write_bytes(gzip.compress(_idx_bytes(np.array([1, 2, 3], np.uint8), 2049)))
  assert "5 train images but 3 labels" in _load_error(_cfg(name="mnist", source="idx", path=str(folder)))
  labels_file.unlink()
  message = _load_error(_cfg(name="mnist", source="idx", path=str(folder)))
  assert "train-labels-idx1-ubyte.gz missing" in message and "--config.data.source=idx" in message


# ----------------------------------------------------------------------------------------------------
# image_folder


def _save_image(path, array, fmt):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path, format=fmt)


def _write_png_folder(root, rng):
  """Two classes, PNG only (lossless); returns {(split, class, file): pixels}."""
  written = {}
  counts = {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 1}}
  for split, per_class in counts.items():
    for class_name, count in per_class.items():
      for k in range(count):
        pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        _save_image(root / split / class_name / f"{k:04d}.png", pixels, "PNG")
        written[(split, class_name, f"{k:04d}.png")] = pixels
  # A grayscale PNG among RGB ones is converted to RGB, and non-images are ignored.
  gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  _save_image(root / "train" / "dog" / "0002.png", gray, "PNG")
  written[("train", "dog", "0002.png")] = np.repeat(gray[..., None], 3, axis=-1)
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  return written


def _expected_order(written, split):
  """Round-robin over sorted classes, files sorted by name within a class."""
  per_class = [sorted(k for k in written if k[0] == split and k[1] == c) for c in ("cat", "dog")]
  order = []
  for rank in range(max(map(len, per_class))):
    order += [(label, keys[rank]) for label, keys in enumerate(per_class) if rank < len(keys)]
  return order


def _assert_matches_written(dataset, written):
  for split in ("train", "test"):
    order = _expected_order(written, split)
    images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
    np.testing.assert_array_equal(labels, [label for label, _ in order])
    np.testing.assert_array_equal(images, np.stack([written[key] for _, key in order]))


def test_image_folder_png_exact_pixels_and_order(tmp_path):
  written = _write_png_folder(tmp_path / "pets", np.random.default_rng(5))
  dataset = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path / "pets"), cache=False))
  _assert_well_formed(dataset)
  assert dataset.name == "pets" and dataset.num_classes == 2
  assert dataset.train_images.shape == (6, 5, 7, 3)
  _assert_matches_written(dataset, written)
  gray = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path / "pets"), grayscale=True,
                                cache=False))
  assert gray.train_images.shape == (6, 5, 7, 1)


def test_image_folder_jpeg(tmp_path):
  # A smooth gradient, because JPEG keeps those close to the original.
  smooth = np.linspace(0, 255, 8 * 8 * 3).reshape(8, 8, 3).astype(np.uint8)
  for split, count in (("train", 2), ("test", 1)):
    for class_name in ("a", "b", "c"):
      for k in range(count):
        _save_image(tmp_path / split / class_name / f"{k}.jpg", smooth, "JPEG")
  (tmp_path / "train" / "a" / "2.JPEG").write_bytes((tmp_path / "train" / "a" / "0.jpg").read_bytes())
  dataset = data.load_dataset(_cfg(source="image_folder", path=str(tmp_path), cache=False))
  assert dataset.train_images.shape == (7, 8, 8, 3) and dataset.test_images.shape == (3, 8, 8, 3)
  np.testing.assert_array_equal(dataset.train_labels, [0, 1, 2, 0, 1, 2, 0])
  assert np.abs(dataset.train_images.astype(int) - smooth).mean() < 4


def test_image_folder_errors(tmp_path):
  rng = np.random.default_rng(7)
  _write_png_folder(tmp_path, rng)
  _save_image(tmp_path / "train" / "cat" / "0009.png", np.zeros((6, 7, 3), np.uint8), "PNG")
  message = _load_error(_cfg(source="image_folder", path=str(tmp_path), cache=False))
  assert "one size" in message and "train/cat/0009.png" in message
  (tmp_path / "train" / "cat" / "0009.png").unlink()
  (tmp_path / "test" / "bird").mkdir()
  message = _load_error(_cfg(source="image_folder", path=str(tmp_path), cache=False))
  assert "same class folders" in message
  (tmp_path / "test" / "bird").rmdir()
  (tmp_path / "train" / "cat" / "0000.png").write_bytes(b"garbage")
  assert "cannot decode image train/cat/0000.png" in _load_error(_cfg(source="image_folder", path=str(tmp_path),
                                                            cache=False))


def _tar_folder(folder, archive, prefix=""):
  with tarfile.open(archive, "w:gz") as tar:
    for path in sorted(folder.rglob("*")):
      tar.add(path, arcname=prefix + str(path.relative_to(folder)), recursive=False)


def _snapshot(folder):
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_image_folder_tar_gz_is_read_in_place_and_cached(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  monkeypatch.setenv("KD_JAX_CACHE", str(cache))
  written = _write_png_folder(tmp_path / "src" / "pets", np.random.default_rng(8))
  archive = tmp_path / "shared" / "pets.tar.gz"
  archive.parent.mkdir()
  _tar_folder(tmp_path / "src" / "pets", archive, prefix="pets/")  # A top folder inside is fine.
  archive.chmod(0o444)
  archive.parent.chmod(0o555)  # Like ../shared/data: nothing may be written next to the archive.
  before = _snapshot(archive.parent)
  try:
    dataset = data.load_dataset(_cfg(source="image_folder", path=str(archive)))
    assert dataset.name == "pets" and dataset.num_classes == 2
    _assert_matches_written(dataset, written)
    cached = list((cache / "image_folder").glob("pets-*.npz"))
    assert len(cached) == 1
    # The second load must come from the cache, not from decoding the archive again.
    monkeypatch.setattr(sources, "_decode_listing", lambda *a: pytest.fail("decoded despite the cache"))
    again = data.load_dataset(_cfg(source="image_folder", path=str(archive), train_size=3))
    np.testing.assert_array_equal(again.train_images, dataset.train_images[:3])
    np.testing.assert_array_equal(again.test_labels, dataset.test_labels)
    assert _snapshot(archive.parent) == before
  finally:
    archive.parent.chmod(0o755)


def test_image_folder_cache_follows_changes_to_the_folder(tmp_path, monkeypatch):
  monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
  root = tmp_path / "pets"
  _write_png_folder(root, np.random.default_rng(9))
  first = data.load_dataset(_cfg(source="image_folder", path=str(root)))
  _save_image(root / "train" / "cat" / "0000.png", np.full((5, 7, 3), 17, np.uint8), "PNG")
  second = data.load_dataset(_cfg(source="image_folder", path=str(root)))
  assert (second.train_images[0] == 17).all() and not (first.train_images[0] == 17).all()
  assert len(list((tmp_path / "cache" / "image_folder").glob("pets-*.npz"))) == 2


def test_image_folder_loads_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
  not_a_folder = tmp_path / "cache"
  not_a_folder.write_text("a file where the cache folder would go")
  monkeypatch.setenv("KD_JAX_CACHE", str(not_a_folder))
  written = _write_png_folder(tmp_path / "pets", np.random.default_rng(11))
  _assert_matches_written(data.load_dataset(_cfg(source="image_folder", path=str(tmp_path / "pets"))),
                          written)
  assert not_a_folder.read_text() == "a file where the cache folder would go"


def test_image_folder_decode_shows_progress_and_the_cache_read(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a progress line after every image
  _write_png_folder(tmp_path / "pets", np.random.default_rng(12))
  data.load_dataset(_cfg(source="image_folder", path=str(tmp_path / "pets")))
  out = capsys.readouterr().out
  assert f"[data] reading and decoding the images of {tmp_path / 'pets'}" in out
  assert "[data] decoding train images: 5/6, " in out and "img/s" in out
  assert "[data] decoding test images: 1/2, " in out
  assert "[data] decoded 8 images of" in out and "[data] cached the decoded images of" in out
  data.load_dataset(_cfg(source="image_folder", path=str(tmp_path / "pets")))
  out = capsys.readouterr().out
  assert "[data] read the decoded images of" in out and "from the cache" in out
  assert "decoding" not in out


# ----------------------------------------------------------------------------------------------------
# tfds


def _png_bytes(pixels):
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _prepare_tiny_tfds(data_dir, train, test):
  """Prepares a real tfds dataset as array_record, with the features of tfds' mnist, without TensorFlow.

  The examples carry PNG bytes rather than arrays because tfds encodes arrays with tf.image; it stores
  bytes as they are, exactly as its own builders do for files they download.
  """
  import tensorflow_datasets as tfds

  class KdJaxTinyDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """skip_registration: load_dataset must find it from the files in data_dir alone."""
    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(6, 5, 1)),
              "label": tfds.features.ClassLabel(num_classes=10),
          }),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, examples):
      for i, (pixels, label) in enumerate(examples):
        yield i, {"image": _png_bytes(pixels[..., 0]), "label": label}

  KdJaxTinyDigits(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return "kd_jax_tiny_digits"


def _as_sorted_pairs(images, labels):
  return sorted((bytes(image), int(label)) for image, label in zip(images, labels))


def test_tfds_array_record_without_tensorflow(tmp_path):
  rng = np.random.default_rng(10)
  train = [(rng.integers(0, 256, (6, 5, 1), dtype=np.uint8), i % 10) for i in range(12)]
  test = [(rng.integers(0, 256, (6, 5, 1), dtype=np.uint8), 9 - i) for i in range(4)]
  name = _prepare_tiny_tfds(tmp_path / "tfds", train, test)
  assert any(p.name.endswith(".array_record-00000-of-00001") for p in (tmp_path / "tfds").rglob("*"))
  dataset = data.load_dataset(_cfg(name=name, source="tfds", data_dir=str(tmp_path / "tfds")))
  _assert_well_formed(dataset)
  assert dataset.name == name and dataset.num_classes == 10
  assert dataset.train_images.shape == (12, 6, 5, 1) and dataset.test_images.shape == (4, 6, 5, 1)
  # tfds stores examples in its own (hash-shuffled) order, so compare as sets of (image, label).
  assert _as_sorted_pairs(dataset.train_images, dataset.train_labels) == _as_sorted_pairs(*zip(*train))
  assert _as_sorted_pairs(dataset.test_images, dataset.test_labels) == _as_sorted_pairs(*zip(*test))
  again = data.load_dataset(_cfg(name=name, source="tfds", data_dir=str(tmp_path / "tfds"), train_size=5))
  np.testing.assert_array_equal(again.train_images, dataset.train_images[:5])


def test_tfds_not_prepared_is_not_downloaded(tmp_path):
  message = _load_error(_cfg(name="cifar100", source="tfds", data_dir=str(tmp_path)))
  assert "not prepared" in message and "tfds build cifar100" in message
  assert "--file_format array_record" in message
  assert "--config.data.data_dir" in message and "cifar_pickle" in message
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.
  message = _load_error(_cfg(name="no_such_dataset_xyz", source="tfds", data_dir=str(tmp_path)))
  assert "no dataset 'no_such_dataset_xyz'" in message


# ----------------------------------------------------------------------------------------------------
# real data in ../shared/data (skipped when absent)


def _shared(relative):
  path = SHARED_DATA / relative
  if not path.exists():
    pytest.skip(f"{path} is not here (real data lives in ../shared/data on development machines)")
  return path


def test_real_fashion_mnist_idx():
  dataset = data.load_dataset(_cfg(name="fashion_mnist", source="idx", path=str(_shared("fashion-mnist"))))
  _assert_well_formed(dataset)
  assert dataset.train_images.shape == (60000, 28, 28, 1)
  assert dataset.test_images.shape == (10000, 28, 28, 1)
  assert dataset.num_classes == 10
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
  assert dataset.train_labels[0] == 9 and dataset.test_labels[0] == 9  # Both start with an ankle boot.


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                    "truck")


def test_real_cifar10_jpeg_subset(tmp_path, monkeypatch):
  """The first few images of every class, copied from the real archive into a small tar.gz."""
  monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
  keep = {"train": 4, "test": 2}
  subset, members = tmp_path / "cifar10_subset.tar.gz", {}
  real_archive = _shared("cifar10_jpeg_q75.tar.gz")
  with tarfile.open(real_archive, "r:gz") as real, tarfile.open(subset, "w:gz") as out:
    for member in real:
      split, *rest = member.name.split("/")
      if member.isfile() and int(rest[-1].split(".")[0]) < keep[split]:
        payload = real.extractfile(member).read()
        members[member.name] = payload
        out.addfile(member, io.BytesIO(payload))
  dataset = data.load_dataset(_cfg(name="cifar10", source="image_folder", path=str(subset)))
  _assert_well_formed(dataset)
  assert dataset.num_classes == 10
  assert dataset.train_images.shape == (40, 32, 32, 3) and dataset.test_images.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(dataset.train_labels, list(range(10)) * 4)
  for k, label in ((0, 0), (13, 3), (39, 9)):  # Round-robin: example k is image k // 10 of class k % 10.
    member = f"train/{_CIFAR10_CLASSES[label]}/{k // 10:04d}.jpg"
    expected = np.asarray(PIL.Image.open(io.BytesIO(members[member])))
    np.testing.assert_array_equal(dataset.train_images[k], expected)


@pytest.mark.skipif(os.environ.get("KD_JAX_SLOW_TESTS") != "1",
                    reason="decodes 60k JPEGs (~15s); set KD_JAX_SLOW_TESTS=1")
def test_real_cifar10_jpeg_full(tmp_path, monkeypatch):
  monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
  cfg = _cfg(name="cifar10", source="image_folder", path=str(_shared("cifar10_jpeg_q75.tar.gz")))
  dataset = data.load_dataset(cfg)
  _assert_well_formed(dataset)
  assert dataset.train_images.shape == (50000, 32, 32, 3)
  assert dataset.test_images.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
  cached = data.load_dataset(cfg)
  np.testing.assert_array_equal(cached.train_images, dataset.train_images)


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
