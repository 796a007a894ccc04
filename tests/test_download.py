"""Tests for kd_jax.data.download: data.source='auto' finds a dataset on disk or downloads it once.

No internet: a loopback HTTP server started here (127.0.0.1, port 0, Range requests supported)
serves small files written in the original formats (CIFAR's pickle archives, MNIST-style IDX .gz
files, EMNIST's zip of them, SVHN's MATLAB files). The releases' URLs and checksums are pointed at
it by patching download.RELEASES: with monkeypatch in this process, and for runs of run.py by a
launcher that patches it and then runs run.py as __main__.
"""

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import scipy.io

from conftest import REPO, SHARED_DATA, TEST_COMPILATION_CACHE
from kd_jax import config as kd_config
from kd_jax import progress
from kd_jax import workdir as workdir_lib
from kd_jax.data import download, load_dataset
from kd_jax.errors import KdJaxError

# ----------------------------------------------------------------------------------------------------
# The loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
  """GET /<file name>: the bytes registered for it, a 206 part for 'Range: bytes=N-'."""

  def do_GET(self):  # noqa: N802 (http.server's name)
    server = self.server
    name = self.path.lstrip("/")
    server.requests.append((name, self.headers.get("Range")))
    body = server.files.get(name)
    if body is None:
      self.send_error(404)
      return
    start = 0
    asked = self.headers.get("Range")
    if asked and server.ranges:
      start = int(asked.split("=")[1].split("-")[0])
      if start >= len(body):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(body)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(body) - start))
    self.end_headers()
    payload = body[start:]
    if server.cuts.get(name, 0) > 0:  # close the connection mid-body
      server.cuts[name] -= 1
      payload = payload[:server.cut_bytes]
      self.close_connection = True
    self.wfile.write(payload)
    server.sent[name] = server.sent.get(name, 0) + len(payload)

  def log_message(self, *args):
    del args


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.files, httpd.requests, httpd.cuts, httpd.sent = {}, [], {}, {}
  httpd.ranges, httpd.cut_bytes = True, 0
  httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _gets(server, name=None):
  return [r for r in server.requests if name is None or r[0] == name]


def _served_files(server, name, files, algorithm="sha256", wrong=False):
  """`name`'s RemoteFiles, pointed at `server` serving `files` ({file name: bytes}) with their
  checksums (all zeros with wrong=True); keeps each release's file names."""
  server.files.update(files)
  remotes = []
  for remote in download.RELEASES[name].files:
    body = files[remote.name]
    digest = "0" * 64 if wrong else hashlib.new(algorithm, body).hexdigest()
    sha256 = algorithm == "sha256"
    remotes.append(download.RemoteFile(
        remote.name, (server.base + remote.name,), sha256=digest if sha256 else "",
        md5="" if sha256 else digest[:32], size=len(body) if sha256 else 0))
  return tuple(remotes)


def _serve(monkeypatch, server, name, files, **kwargs):
  remotes = _served_files(server, name, files, **kwargs)
  monkeypatch.setitem(download.RELEASES, name,
                      dataclasses.replace(download.RELEASES[name], files=remotes))


@pytest.fixture(autouse=True)
def no_tfds_copies(tmp_path, monkeypatch):
  """No tfds data_dir of this machine (or the user's download settings) takes part."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv(download.NO_DOWNLOAD_ENV, raising=False)
  monkeypatch.delenv(download.DIR_ENV, raising=False)


def _auto(tmp_path, name, **fields):
  return kd_config.data_config(name=name, source="auto", download_dir=str(tmp_path / "cache"),
                               **fields)


def _one_line_error(cfg):
  with pytest.raises(KdJaxError) as info:
    load_dataset(cfg)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def _files_under(path):
  if not path.exists():
    return []
  return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------
# Small files in the original formats


def _pickled(obj):
  return pickle.dumps(obj, protocol=2)


def _tar_gz(members):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, body in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(body)
      tar.addfile(info, io.BytesIO(body))
  return buffer.getvalue()


def _cifar10_archive(rng, per_batch=4, num_test=6):
  """cifar-10-python.tar.gz's layout: (archive bytes, train rows, labels, test rows, labels)."""
  members, rows, labels = {}, [], []
  for i in range(1, 6):
    batch_rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    batch_labels = rng.integers(0, 10, per_batch).tolist()
    members[f"cifar-10-batches-py/data_batch_{i}"] = _pickled(
        {b"batch_label": b"training batch", b"data": batch_rows, b"labels": batch_labels,
         b"filenames": [b"x.png"] * per_batch})
    rows.append(batch_rows)
    labels += batch_labels
  test_rows = rng.integers(0, 256, (num_test, 3072), dtype=np.uint8)
  test_labels = rng.integers(0, 10, num_test).tolist()
  members["cifar-10-batches-py/test_batch"] = _pickled({b"data": test_rows, b"labels": test_labels})
  members["cifar-10-batches-py/batches.meta"] = _pickled({b"label_names": [b"airplane"] * 10})
  members["cifar-10-batches-py/readme.html"] = b"<html></html>"
  return (_tar_gz(members), np.concatenate(rows), np.asarray(labels), test_rows,
          np.asarray(test_labels))


def _cifar100_archive(rng, num_train=40, num_test=20):
  members = {}
  for split, count in (("train", num_train), ("test", num_test)):
    members[f"cifar-100-python/{split}"] = _pickled(
        {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
         b"fine_labels": rng.integers(0, 100, count).tolist(),
         b"coarse_labels": rng.integers(0, 20, count).tolist()})
  members["cifar-100-python/meta"] = _pickled({b"fine_label_names": [b"apple"] * 100})
  return _tar_gz(members)


def _idx(array):
  """An IDX file of unsigned bytes, gzipped: magic 0x0803 (images) or 0x0801 (labels)."""
  header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def _idx_files(rng, num_train=12, num_test=5, labels=(0, 10)):
  arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte.gz": rng.integers(*labels, num_train).astype(np.uint8),
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte.gz": rng.integers(*labels, num_test).astype(np.uint8)}
  return {name: _idx(array) for name, array in arrays.items()}, arrays


def _emnist_zip(idx_files, split):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as zipped:
    for name, body in idx_files.items():
      part, rest = name.split("-", 1)
      zipped.writestr(f"gzip/emnist-{split}-{'train' if part == 'train' else 'test'}-{rest}", body)
    zipped.writestr(f"gzip/emnist-{split}-mapping.txt", "1 65 97\n")
    zipped.writestr("gzip/emnist-digits-train-labels-idx1-ubyte.gz", _idx(np.zeros(3, np.uint8)))
  return buffer.getvalue()


def _svhn_mat(images, labels):
  """SVHN's layout: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"X": np.transpose(images, (1, 2, 3, 0)),
                            "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})
  return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------
# Each release: downloaded once, checked, unpacked, read exactly


def test_cifar10_downloads_once_with_its_md5_unpacks_and_reads_exactly(server, tmp_path,
                                                                      monkeypatch, capsys):
  archive, rows, labels, test_rows, test_labels = _cifar10_archive(np.random.default_rng(0))
  _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive}, algorithm="md5")
  monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a progress line for every chunk
  dataset = load_dataset(_auto(tmp_path, "cifar10"))
  chw_to_hwc = lambda r: r.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(dataset.train_images, chw_to_hwc(rows))
  np.testing.assert_array_equal(dataset.train_labels, labels)
  np.testing.assert_array_equal(dataset.test_images, chw_to_hwc(test_rows))
  np.testing.assert_array_equal(dataset.test_labels, test_labels)
  assert dataset.name == "cifar10" and dataset.num_classes == 10
  err = capsys.readouterr().err
  size = f"{len(archive) / 1e6:.1f} MB"
  assert f"downloading cifar-10-python.tar.gz ({size}) from {server.base}" in err
  assert "MB/s, ETA" in err and "(100%)" in err and "[########################]" in err
  assert "md5 verified" in err
  cache = tmp_path / "cache" / "cifar10"
  assert _files_under(cache) == sorted([".lock", "cifar-10-python.tar.gz"] + [
      f"cifar-10-batches-py/{n}" for n in ("batches.meta", "readme.html", "test_batch")] + [
          f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)])
  again = load_dataset(_auto(tmp_path, "cifar10"))
  np.testing.assert_array_equal(again.train_images, dataset.train_images)
  assert len(_gets(server)) == 1  # the second load read the cache


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_releases_download_and_read_their_files_as_they_are(server, tmp_path, monkeypatch,
                                                                name):
  files, arrays = _idx_files(np.random.default_rng(1))
  _serve(monkeypatch, server, name, files)
  dataset = load_dataset(_auto(tmp_path, name))
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"])
  np.testing.assert_array_equal(dataset.test_labels, arrays["t10k-labels-idx1-ubyte.gz"])
  assert dataset.name == name and dataset.num_classes == 10
  assert len(_gets(server)) == 4
  load_dataset(_auto(tmp_path, name))
  assert len(_gets(server)) == 4


def test_emnist_split_is_unpacked_from_the_zip_under_mnist_names(server, tmp_path, monkeypatch):
  files, arrays = _idx_files(np.random.default_rng(2), labels=(1, 27))
  _serve(monkeypatch, server, "emnist/letters", {"gzip.zip": _emnist_zip(files, "letters")})
  dataset = load_dataset(_auto(tmp_path, "emnist/letters"))
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"])
  np.testing.assert_array_equal(dataset.train_labels, arrays["train-labels-idx1-ubyte.gz"])
  np.testing.assert_array_equal(dataset.test_images[..., 0], arrays["t10k-images-idx3-ubyte.gz"])
  assert dataset.num_classes == 37  # tfds's emnist/letters
  unpacked = tmp_path / "cache" / "emnist" / "letters"
  assert _files_under(unpacked) == sorted(files)
  assert not list(unpacked.parent.glob(".letters.*"))  # the temporary folder is gone


def test_svhn_mat_maps_label_10_to_digit_0_and_transposes_to_nhwc(server, tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  train = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  train_labels = np.array([0, 1, 9, 0, 5, 3, 2])
  test = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  test_labels = np.array([0, 7, 8])
  _serve(monkeypatch, server, "svhn_cropped", {"train_32x32.mat": _svhn_mat(train, train_labels),
                                               "test_32x32.mat": _svhn_mat(test, test_labels)})
  dataset = load_dataset(_auto(tmp_path, "svhn_cropped"))
  np.testing.assert_array_equal(dataset.train_images, train)
  np.testing.assert_array_equal(dataset.train_labels, train_labels)
  np.testing.assert_array_equal(dataset.test_images, test)
  np.testing.assert_array_equal(dataset.test_labels, test_labels)
  assert dataset.num_classes == 10


# ----------------------------------------------------------------------------------------------------
# Where 'auto' looks first; what forbids the network


def test_auto_reads_data_path_and_a_copy_in_the_cache_without_the_network(server, tmp_path,
                                                                          monkeypatch):
  archive, rows, *_ = _cifar10_archive(np.random.default_rng(4))
  _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive}, algorithm="md5")
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    tar.extractall(tmp_path / "mine", filter="data")
  # A tfds folder for the name that holds no prepared dataset is passed over.
  (tmp_path / "tfds" / "cifar10").mkdir(parents=True)
  from_path = load_dataset(_auto(tmp_path, "cifar10", path=str(tmp_path / "mine")))
  assert from_path.train_images.shape[0] == len(rows)
  # The original archive copied into the cache by hand is checked and unpacked, not downloaded.
  (tmp_path / "cache" / "cifar10").mkdir(parents=True)
  (tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
  from_cache = load_dataset(_auto(tmp_path, "cifar10", download=False))
  np.testing.assert_array_equal(from_cache.train_images, from_path.train_images)
  assert not _gets(server)


def test_download_false_and_the_environment_variable_forbid_the_network(server, tmp_path,
                                                                        monkeypatch):
  files, _ = _idx_files(np.random.default_rng(5))
  _serve(monkeypatch, server, "mnist", files)
  message = _one_line_error(_auto(tmp_path, "mnist", download=False))
  assert "downloading is off (--config.data.download=false)" in message
  assert "--config.data.source=idx --config.data.path=DIR" in message
  monkeypatch.setenv(download.NO_DOWNLOAD_ENV, "1")
  message = _one_line_error(_auto(tmp_path, "mnist"))
  assert "downloading is off (KD_JAX_NO_DOWNLOAD=1)" in message
  assert not _gets(server) and not (tmp_path / "cache").exists()


def test_no_connection_is_one_line_with_the_flags_to_type(tmp_path, monkeypatch):
  with socket.socket() as s:  # a port nothing listens on: connection refused
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  remote = download.RemoteFile("cifar-100-python.tar.gz", (f"http://127.0.0.1:{port}/x.tar.gz",),
                               md5="0" * 32)
  monkeypatch.setitem(download.RELEASES, "cifar100",
                      dataclasses.replace(download.RELEASES["cifar100"], files=(remote,)))
  message = _one_line_error(_auto(tmp_path, "cifar100"))
  assert "cannot download cifar-100-python.tar.gz for cifar100: no connection" in message
  assert "Connection refused" in message
  assert "--config.data.source=cifar_pickle --config.data.path=DIR" in message
  assert f"{tmp_path / 'cache' / 'cifar100'}/" in message  # where a copy made by hand goes
  assert _files_under(tmp_path / "cache") == ["cifar100/.lock"]


def test_ood_data_messages_name_its_own_flags(tmp_path):
  cfg = _auto(tmp_path, "svhn_cropped", download=False)
  with pytest.raises(KdJaxError) as info:
    load_dataset(cfg, key="distill.ood_data")
  assert "--config.distill.ood_data.download=false" in str(info.value)
  assert "--config.distill.ood_data.source=svhn_mat --config.distill.ood_data.path=DIR" in str(
      info.value)


# ----------------------------------------------------------------------------------------------------
# Interrupted, resumed and corrupted downloads


def test_an_interrupted_download_leaves_nothing_trusted_and_a_rerun_continues_it(server, tmp_path,
                                                                                 monkeypatch):
  archive, rows, *_ = _cifar10_archive(np.random.default_rng(6))
  _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive}, algorithm="md5")
  name = "cifar-10-python.tar.gz"
  server.cut_bytes, server.cuts[name] = 5000, 1000  # every answer stops after 5,000 bytes
  message = _one_line_error(_auto(tmp_path, "cifar10"))
  assert "rerun the same command to try again" in message and "received are kept" in message
  folder = tmp_path / "cache" / "cifar10"
  assert _files_under(folder) == [".lock", f"{name}.part"]  # no file a later run would trust
  received = (folder / f"{name}.part").stat().st_size
  attempts = len(_gets(server))
  assert attempts > 1 and received == 5000 * attempts  # each attempt continued the last one
  ranges = [None] + [f"bytes={5000 * i}-" for i in range(1, attempts)]
  assert [r[1] for r in _gets(server)] == ranges
  assert "not on this machine" in _one_line_error(_auto(tmp_path, "cifar10", download=False))
  server.cuts[name] = 0
  dataset = load_dataset(_auto(tmp_path, "cifar10"))
  assert _gets(server)[-1] == (name, f"bytes={received}-")
  assert server.sent[name] == len(archive)  # every byte sent once
  assert dataset.train_images.shape[0] == len(rows)
  assert (folder / name).read_bytes() == archive and not (folder / f"{name}.part").exists()


def test_a_host_without_ranges_restarts_the_download(server, tmp_path, monkeypatch):
  files, arrays = _idx_files(np.random.default_rng(7))
  _serve(monkeypatch, server, "fashion_mnist", files)
  folder = tmp_path / "cache" / "fashion_mnist"
  folder.mkdir(parents=True)
  name = "train-images-idx3-ubyte.gz"
  (folder / f"{name}.part").write_bytes(b"stale bytes of another file")
  server.ranges = False
  dataset = load_dataset(_auto(tmp_path, "fashion_mnist"))
  assert (name, "bytes=27-") in _gets(server)  # asked to continue, got the whole file instead
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays[name])


def test_a_wrong_checksum_keeps_nothing(server, tmp_path, monkeypatch):
  files, _ = _idx_files(np.random.default_rng(8))
  _serve(monkeypatch, server, "mnist", files, wrong=True)
  message = _one_line_error(_auto(tmp_path, "mnist"))
  assert "not the published " + "0" * 64 in message and "nothing kept" in message
  assert _files_under(tmp_path / "cache") == ["mnist/.lock"]


def test_a_bad_file_copied_into_the_cache_is_rejected(server, tmp_path, monkeypatch):
  files, _ = _idx_files(np.random.default_rng(9))
  _serve(monkeypatch, server, "mnist", files)
  load_dataset(_auto(tmp_path, "mnist"))
  (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not it")
  message = _one_line_error(_auto(tmp_path, "mnist"))
  assert "t10k-labels-idx1-ubyte.gz has sha256" in message and "delete it and rerun" in message


def test_concurrent_loads_share_one_download(server, tmp_path, monkeypatch):
  archive, *_ = _cifar10_archive(np.random.default_rng(10))
  _serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive}, algorithm="md5")
  results = []
  load = lambda: results.append(load_dataset(_auto(tmp_path, "cifar10")))
  threads = [threading.Thread(target=load) for _ in range(3)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(results) == 3 and len(_gets(server)) == 1


# ----------------------------------------------------------------------------------------------------
# Config and messages


def test_auto_needs_a_name_and_knows_which_it_downloads(tmp_path):
  config = kd_config.default_config()
  config.data.update(dict(source="auto", name=""))
  with pytest.raises(KdJaxError, match=r"--config.data.name=cifar100"):
    kd_config.validate(config)
  message = _one_line_error(_auto(tmp_path, "imagenet2012"))
  assert "licensed and never downloaded" in message and "--manual_dir MANUAL_DIR" in message
  assert "cifar100" in message and "svhn_cropped" in message
  assert {"data.download", "data.download_dir"} <= set(workdir_lib.OPERATIONAL_KEYS)


def test_tfds_messages_name_every_package_and_never_promise_tensorflow_reads_tfrecord():
  for name in ("cifar100", "imagenet2012", "some_dataset"):
    howto = download.tfds_howto(name)
    assert "pip install tensorflow apache-beam mlcroissant importlib_resources" in howto
    assert f"`tfds build {name}" in howto and "--file_format array_record" in howto
    assert "--config.data.source=tfds --config.data.data_dir=DIR" in howto
    assert "data.source='" not in howto
  assert "--manual_dir MANUAL_DIR" in download.tfds_howto("imagenet2012")
  cifar = download.tfds_howto("cifar100")
  assert "--config.data.source=cifar_pickle --config.data.path=DIR" in cifar


# ----------------------------------------------------------------------------------------------------
# The headline command, through run.py

# Patches download.RELEASES from $DOWNLOAD_TEST_RELEASES, then runs run.py with this process's args.
_LAUNCHER = """
import dataclasses, json, os, runpy, sys
from kd_jax.data import download
for name, files in json.loads(os.environ["DOWNLOAD_TEST_RELEASES"]).items():
  remotes = tuple(download.RemoteFile(**dict(f, urls=tuple(f["urls"]))) for f in files)
  download.RELEASES[name] = dataclasses.replace(download.RELEASES[name], files=remotes)
sys.argv = ["run.py"] + sys.argv[1:]
runpy.run_path("run.py", run_name="__main__")
"""
_TINY = ["--config.teacher.model.name=digits_cnn", "--config.teacher.model.width=4",
         "--config.teacher.ensemble_size=1", "--config.teacher.steps=2",
         "--config.teacher.batch_size=8", "--config.student.model.name=mlp",
         "--config.student.model.width=16", "--config.student.steps=2",
         "--config.student.batch_size=8", "--config.eval_batch_size=10",
         "--config.evaluation.augmented_batches=1", "--config.log_every_steps=1",
         "--config.checkpoint_every_steps=2"]


def _run(args, releases, cache):
  served = {name: [dataclasses.asdict(r) for r in remotes] for name, remotes in releases.items()}
  env = dict(os.environ, KD_JAX_COMPILATION_CACHE=TEST_COMPILATION_CACHE,
             KD_JAX_DATASETS=str(cache), DOWNLOAD_TEST_RELEASES=json.dumps(served))
  return subprocess.run([sys.executable, "-c", _LAUNCHER, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_headline_command_downloads_cifar100_once_and_trains(server, tmp_path):
  archive = _cifar100_archive(np.random.default_rng(11))
  releases = {"cifar100": _served_files(server, "cifar100", {"cifar-100-python.tar.gz": archive},
                                        algorithm="md5")}
  args = ["--config=configs/cifar_kd.py", f"--workdir={tmp_path / 'c100'}", *_TINY]
  first = _run(args, releases, tmp_path / "cache")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "downloaded cifar-100-python.tar.gz" in first.stderr and "md5 verified" in first.stderr
  with open(tmp_path / "c100" / "results.json") as f:
    results = json.load(f)
  assert 0.0 <= results["student"]["test_agreement"] <= 1.0
  assert (tmp_path / "cache" / "cifar100" / "cifar-100-python" / "train").is_file()
  second = _run(args, releases, tmp_path / "cache")
  assert second.returncode == 0, second.stderr[-3000:]
  assert len(_gets(server)) == 1 and "downloading" not in second.stderr


@pytest.mark.e2e
def test_headline_command_with_a_wrong_checksum_exits_2_in_one_line(server, tmp_path):
  archive = _cifar100_archive(np.random.default_rng(12))
  releases = {"cifar100": _served_files(server, "cifar100", {"cifar-100-python.tar.gz": archive},
                                        algorithm="md5", wrong=True)}
  result = _run(["--config=configs/cifar_kd.py", f"--workdir={tmp_path / 'c100'}"], releases,
                tmp_path / "cache")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr
  assert "not the published " + "0" * 32 in errors[0] and "nothing kept" in errors[0]
  assert _files_under(tmp_path / "cache") == ["cifar100/.lock"]
  assert not (tmp_path / "c100").exists()


def test_real_fashion_mnist_files_match_the_pinned_checksums(tmp_path):
  """The byte-exact originals in ../shared/data, copied into the cache, pass the pinned sha256s."""
  originals = SHARED_DATA / "fashion-mnist"
  if not originals.is_dir():
    pytest.skip(f"{originals} is not here (real data lives in ../shared/data on development "
                "machines)")
  folder = tmp_path / "cache" / "fashion_mnist"
  folder.mkdir(parents=True)
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (folder / name).symlink_to(originals / name)
  dataset = load_dataset(_auto(tmp_path, "fashion_mnist", download=False))
  assert dataset.train_images.shape == (60000, 28, 28, 1) and dataset.test_labels.shape == (10000,)
