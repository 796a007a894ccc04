"""The public datasets a run needs, found on disk or fetched once from their official hosts.

`resolve(cfg)` turns a data config with data.source='auto' into one naming a concrete source and
path, looking for data.name in this order:

  1. data.path, read with the dataset's original-format source (cifar_pickle, idx or svhn_mat);
  2. a tfds copy prepared as array_record in data.data_dir (default $TFDS_DATA_DIR, else
     ~/tensorflow_datasets), so that machines which read tfds before keep reading it (tfds stores
     examples in its own order, so the two copies train differently);
  3. the download cache, one folder per dataset under data.download_dir, else $KD_JAX_DATASETS, else
     ~/.cache/kd_jax/datasets;
  4. the official host (or a mirror serving the same bytes), unless data.download is false or
     KD_JAX_NO_DOWNLOAD is set: the original files are downloaded into the cache, checked against
     their published checksum, and unpacked where the source reads them.

A file is downloaded to `<name>.part` and renamed to `<name>` only once complete and verified, so an
interrupted download leaves nothing a later run trusts; the next attempt continues the .part with an
HTTP Range request (from the start where the host ignores ranges). A checksum mismatch deletes the
.part and is one KdJaxError line. Files found in the cache are checked before they are read or
unpacked (a file copied there by hand too), and an unpacked folder is written under a temporary name
and renamed, so it exists only complete. A lock file per dataset folder lets concurrent processes
(runs of a sweep, the processes of a multi-process run) share one download.

Only datasets their authors publish for anyone to download are fetched (RELEASES): CIFAR-10,
CIFAR-100, MNIST, Fashion-MNIST, EMNIST and SVHN's cropped digits. Licensed ones such as ImageNet
never are: `offline_howto` and `tfds_howto` say where to get a dataset and how to prepare it, here
and in kd_jax/data/sources.py's messages.
"""

import contextlib
import copy
import dataclasses
import fcntl
import functools
import gzip
import hashlib
import http.client
import os
import pathlib
import shutil
import sys
import tarfile
import time
from typing import Callable, Optional
import urllib.error
import urllib.request
import zipfile
import zlib

from kd_jax import progress
from kd_jax.errors import KdJaxError

AUTO = "auto"  # the data.source value resolved here
DIR_ENV = "KD_JAX_DATASETS"  # the download cache, unless data.download_dir is set
NO_DOWNLOAD_ENV = "KD_JAX_NO_DOWNLOAD"  # set (to anything but 0/false/no): never use the network
DEFAULT_DIR = "~/.cache/kd_jax/datasets"
# What the `tfds` command of tensorflow-datasets 4.9.10 needs besides tensorflow-datasets: its
# command-line module imports TensorFlow, Beam and mlcroissant, its builders importlib_resources.
TFDS_BUILD_PACKAGES = "tensorflow apache-beam mlcroissant importlib_resources"
_TIMEOUT_SECONDS = 60  # a connection or read that stalls this long fails (and is retried)
_ATTEMPTS = 3  # a download from one URL cut short is continued this many times in one run
_CHUNK_BYTES = 1 << 20
_BAR_WIDTH = 24
_DELETE_IT = "delete it and rerun to download it again"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One original file of a dataset: where it is published and the checksum it is published with."""

  name: str  # its name in the dataset's cache folder
  urls: tuple  # tried in order: the official host, then mirrors that serve the same bytes
  sha256: str = ""
  md5: str = ""  # only where no sha256 is published
  size: int = 0  # bytes, where published (0 = unknown)

  @property
  def checksum(self):
    """(hashlib algorithm name, published hex digest)."""
    return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)


@dataclasses.dataclass(frozen=True)
class Release:
  """A dataset's original files and how a kd_jax source reads them from the cache."""

  folder: str  # the dataset's folder in the cache
  files: tuple  # its RemoteFiles, downloaded into `folder`
  source: str  # the data.source that reads them: cifar_pickle | idx | svhn_mat
  homepage: str
  holds: str  # what a folder given as data.path must hold, for messages
  # The folder inside `folder` that the source reads, made by unpack(downloaded paths, destination);
  # '' when the source reads the downloaded files as they are, in `folder`.
  unpacked: str = ""
  unpack: Optional[Callable] = None
  num_classes: int = 0  # the idx source's data.num_classes, where a config leaves it 0


# ----------------------------------------------------------------------------------------------------
# Unpacking


def _untar_folder(paths, destination: pathlib.Path, member: str) -> None:
  """Extracts the regular files under `member`/ of the one tar archive in `paths` into `destination`
  (member names are checked, so nothing lands outside it)."""
  (archive,) = paths
  destination.mkdir(parents=True)
  count = 0
  try:
    with tarfile.open(archive, "r:*") as tar:
      for info in tar:
        parts = pathlib.PurePosixPath(info.name).parts
        if not info.isfile() or len(parts) < 2 or parts[0] != member or ".." in parts:
          continue
        out = destination.joinpath(*parts[1:])
        out.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(info) as source, open(out, "wb") as target:
          shutil.copyfileobj(source, target)
        count += 1
  except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise KdJaxError(f"cannot unpack {archive} ({e}); {_DELETE_IT}") from e
  if not count:
    raise KdJaxError(f"{archive} has no files under {member}/; {_DELETE_IT}")


# MNIST's file names, which the idx source reads; also the 4 files of the MNIST-like releases.
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _unzip_emnist(paths, destination: pathlib.Path, split: str) -> None:
  """Extracts the 4 IDX .gz files of EMNIST split `split` from the release's gzip.zip into
  `destination`, under MNIST's names (emnist-letters-test-images-idx3-ubyte.gz ->
  t10k-images-idx3-ubyte.gz)."""
  (archive,) = paths
  destination.mkdir(parents=True)
  try:
    with zipfile.ZipFile(archive) as zipped:
      members = {pathlib.PurePosixPath(n).name: n for n in zipped.namelist()}
      for name in _IDX_FILES:
        part, rest = name.split("-", 1)
        wanted = f"emnist-{split}-{'train' if part == 'train' else 'test'}-{rest}"
        if wanted not in members:
          raise KdJaxError(f"{archive} has no {wanted}; {_DELETE_IT}")
        with zipped.open(members[wanted]) as source, open(destination / name, "wb") as target:
          shutil.copyfileobj(source, target)
  except (zipfile.BadZipFile, EOFError, zlib.error) as e:
    raise KdJaxError(f"cannot unpack {archive} ({e}); {_DELETE_IT}") from e


# ----------------------------------------------------------------------------------------------------
# The releases. Checksums are the published ones: CIFAR's md5s are on its homepage (and in
# torchvision's datasets/cifar.py), which publishes no sha256; the others' sha256s and sizes are
# tensorflow-datasets 4.9.10's url_checksums (the Fashion-MNIST files' also match the md5s in
# torchvision's datasets/mnist.py).

_CIFAR_HOST = "https://www.cs.toronto.edu/~kriz/"


def _cifar(classes: int, archive: str, md5: str, member: str) -> Release:
  return Release(
      folder=f"cifar{classes}", files=(RemoteFile(archive, (_CIFAR_HOST + archive,), md5=md5),),
      source="cifar_pickle", homepage=_CIFAR_HOST + "cifar.html",
      holds=f"{member}/ extracted from {archive}", unpacked=member,
      unpack=functools.partial(_untar_folder, member=member))


def _idx(folder: str, hosts: tuple, homepage: str, published: dict) -> Release:
  files = tuple(RemoteFile(name, tuple(host + name for host in hosts), sha256=sha256, size=size)
                for name, (sha256, size) in published.items())
  return Release(folder=folder, files=files, source="idx", homepage=homepage,
                 holds=", ".join(_IDX_FILES), num_classes=10)


# yann.lecun.com/exdb/mnist's files, from the mirrors tensorflow-datasets and torchvision download.
_MNIST = _idx(
    "mnist", ("https://storage.googleapis.com/cvdf-datasets/mnist/",
              "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "http://yann.lecun.com/exdb/mnist/", {
        "train-images-idx3-ubyte.gz":
            ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        "train-labels-idx1-ubyte.gz":
            ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        "t10k-images-idx3-ubyte.gz":
            ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        "t10k-labels-idx1-ubyte.gz":
            ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    })
_FASHION_MNIST = _idx(
    "fashion_mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "https://github.com/zalandoresearch/fashion-mnist", {
        "train-images-idx3-ubyte.gz":
            ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        "train-labels-idx1-ubyte.gz":
            ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        "t10k-images-idx3-ubyte.gz":
            ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        "t10k-labels-idx1-ubyte.gz":
            ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    })

# One zip of every split's IDX .gz files; the second URL is NIST's older address of the same file.
_EMNIST_ZIP = RemoteFile(
    "gzip.zip", ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
                 "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
    sha256="fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e", size=561753746)
# Classes per split, as tfds's emnist configs (letters: labels 1..26 of 37 classes).
_EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 37, "digits": 10,
                   "mnist": 10}
_EMNIST_DEFAULT = "byclass"  # data.name='emnist', as tfds's default config


def _emnist(split: str) -> Release:
  return Release(
      folder="emnist", files=(_EMNIST_ZIP,), source="idx",
      homepage="https://www.nist.gov/itl/products-and-services/emnist-dataset",
      holds=f"the 4 emnist-{split}-* IDX files of gzip.zip renamed {', '.join(_IDX_FILES)}",
      unpacked=split, unpack=functools.partial(_unzip_emnist, split=split),
      num_classes=_EMNIST_CLASSES[split])


_SVHN_HOST = "http://ufldl.stanford.edu/housenumbers/"
_SVHN = Release(
    folder="svhn_cropped", source="svhn_mat", homepage=_SVHN_HOST,
    holds="train_32x32.mat, test_32x32.mat", files=(
        RemoteFile("train_32x32.mat", (_SVHN_HOST + "train_32x32.mat",),
                   sha256="435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                   size=182040794),
        RemoteFile("test_32x32.mat", (_SVHN_HOST + "test_32x32.mat",),
                   sha256="cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                   size=64275384)))

# data.name -> its release (tfds's dataset names).
RELEASES = {
    "cifar10": _cifar(10, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                      "cifar-10-batches-py"),
    "cifar100": _cifar(100, "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                       "cifar-100-python"),
    "mnist": _MNIST,
    "fashion_mnist": _FASHION_MNIST,
    **{f"emnist/{split}": _emnist(split) for split in _EMNIST_CLASSES},
    "svhn_cropped": _SVHN,
}


def release(name: str) -> Optional[Release]:
  """The release of data.name `name` ('emnist' is 'emnist/byclass'), or None."""
  return RELEASES.get(f"emnist/{_EMNIST_DEFAULT}" if name == "emnist" else name)


# ----------------------------------------------------------------------------------------------------
# Messages


def datasets_dir(cfg=None) -> pathlib.Path:
  """The download cache: data.download_dir, else $KD_JAX_DATASETS, else ~/.cache/kd_jax/datasets."""
  configured = cfg.get("download_dir", "") if cfg is not None else ""
  return pathlib.Path(configured or os.environ.get(DIR_ENV) or DEFAULT_DIR).expanduser()


def tfds_build_howto(name: str, key: str = "data") -> str:
  """How to prepare `name` with tfds as array_record (a clause of a one-line message)."""
  name = name or "NAME"
  manual = name == "imagenet2012"  # built from files the user downloaded (offline_howto)
  where, flag, then = "", " --manual_dir MANUAL_DIR", "then"
  if not manual:
    where, flag, then = "on a machine with internet ", "", "copy DIR here and"
  return (f"{where}run `pip install {TFDS_BUILD_PACKAGES}` (the tfds command needs them besides "
          f"tensorflow-datasets) and `tfds build {name}{flag} --data_dir DIR --file_format "
          f"array_record`, {then} pass --config.{key}.source=tfds --config.{key}.data_dir=DIR")


def offline_howto(name: str, key: str = "data", default: str = "", cfg=None) -> str:
  """How to provide dataset `name` (a clause of a one-line message): where its original files come
  from and the flags that read them, `default` (else a tfds build) for other datasets. `cfg`, the
  data config, places the download cache."""
  if name == "imagenet2012":
    return ("ImageNet is licensed and never downloaded by kd_jax: register at "
            "https://image-net.org/download-images, accept its terms and download "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into MANUAL_DIR, then "
            + tfds_build_howto(name, key))
  if name == "imdb_reviews":
    return ("download aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ on a "
            "machine with internet, copy it (or the aclImdb folder extracted from it) here and "
            f"pass --config.{key}.source=aclimdb --config.{key}.path=FILE_OR_DIR")
  found = release(name)
  if found is None:
    return default or tfds_build_howto(name, key)
  return (f"copy {_file_list(found)} (from {found.homepage}) into "
          f"{datasets_dir(cfg) / found.folder}/ and pass --config.{key}.source=auto, which checks "
          "them against their published checksums (and downloads them itself where there is "
          f"internet), or pass --config.{key}.source={found.source} --config.{key}.path=DIR with "
          f"DIR holding {found.holds}")


def tfds_howto(name: str, key: str = "data") -> str:
  """How to provide `name` for data.source='tfds': a tfds build, or (datasets kd_jax knows) the
  original files."""
  if name == "imagenet2012":
    return offline_howto(name, key)  # where to get the archives the tfds build reads
  howto = tfds_build_howto(name, key)
  if release(name) is None and name != "imdb_reviews":
    return howto
  return f"{howto}; or {offline_howto(name, key)}"


def _file_list(found: Release) -> str:
  return ", ".join(f.name for f in found.files)


def _megabytes(count: int) -> str:
  return f"{count / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _reason(error: BaseException) -> str:
  """The one-line cause of a network error (URLError wraps the socket's)."""
  reason = getattr(error, "reason", None) or error
  return " ".join(f"{type(reason).__name__}: {reason}".split())


# ----------------------------------------------------------------------------------------------------
# Resolution


def _download_off(cfg, key: str) -> tuple:
  """(what forbids downloading, as the user set it, and how to allow it), ('', '') when allowed."""
  if not cfg.get("download", True):
    return f"--config.{key}.download=false", f"drop --config.{key}.download=false"
  value = os.environ.get(NO_DOWNLOAD_ENV, "")
  if value.strip().lower() not in ("", "0", "false", "no"):
    return f"{NO_DOWNLOAD_ENV}={value}", f"unset {NO_DOWNLOAD_ENV}"
  return "", ""


def _replaced(cfg, **fields):
  resolved = copy.deepcopy(cfg)
  for field, value in fields.items():
    resolved[field] = value
  return resolved


def resolve(cfg, key: str = "data"):
  """`cfg` (a kd_jax.config.data_config()) itself, or, for data.source='auto', a copy naming the
  source and path where data.name is (see the module docstring), downloading it first if need be.

  `key` is cfg's place in the config ('data', 'distill.ood_data'), for the flags in messages.
  """
  if cfg.source != AUTO:
    return cfg
  name = cfg.name
  if name == "digits":
    return _replaced(cfg, source="digits")
  found = release(name)
  if found is None:
    known = ", ".join(["digits", "emnist"] + sorted(RELEASES))
    raise KdJaxError(f"--config.{key}.source=auto finds or downloads {known}, not {key}.name="
                     f"{name!r}: {offline_howto(name, key)}")
  num_classes = cfg.get("num_classes", 0) or found.num_classes
  if cfg.path:
    return _replaced(cfg, source=found.source, num_classes=num_classes)
  tfds_dir = _prepared_tfds_dir(name, cfg.data_dir)
  if tfds_dir:
    print(f"[data] {name}: reading the tfds copy prepared in {tfds_dir}", flush=True)
    return _replaced(cfg, source="tfds", data_dir=tfds_dir)
  path = _cached(found, name, cfg, key)
  return _replaced(cfg, source=found.source, path=str(path), num_classes=num_classes)


def _prepared_tfds_dir(name: str, data_dir: str) -> str:
  """The tfds data_dir holding `name` prepared in a format read without TensorFlow, or ''.

  tensorflow_datasets (a slow import) is only imported when the dataset's folder exists there.
  """
  root = pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
  root = root.expanduser()
  if not (root / name).is_dir():
    return ""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ""
  try:
    builder = tfds.builder(name, data_dir=str(root))
  except tfds.core.registered.DatasetNotFoundError:
    return ""
  if not builder.is_prepared():
    return ""
  formats = builder.info.available_file_formats()
  if not formats & tfds.core.file_adapters.FileFormat.with_random_access():
    stored = ", ".join(sorted(f.value for f in formats))
    print(f"[data] {name}: skipping the tfds copy in {root}, stored as {stored}, which kd_jax does "
          "not read (rebuild it with `--file_format array_record` to use it)", file=sys.stderr,
          flush=True)
    return ""
  return str(root)


def _cached(found: Release, name: str, cfg, key: str) -> pathlib.Path:
  """The folder the source reads for `found` in the cache, downloaded and unpacked if need be."""
  folder = datasets_dir(cfg) / found.folder
  target = folder / found.unpacked if found.unpacked else folder
  if found.unpack and target.is_dir():
    return target  # made complete (renamed into place) from checked files
  finals = [folder / remote.name for remote in found.files]
  if not found.unpack and all(path.is_file() for path in finals):
    for remote, path in zip(found.files, finals):
      _check_file(remote, path)
    return target
  off, allow = _download_off(cfg, key)
  if off and not all(path.is_file() for path in finals):
    missing = ", ".join(r.name for r, path in zip(found.files, finals) if not path.is_file())
    raise KdJaxError(
        f"{name} is not on this machine ({missing} not in the download cache {folder}, no tfds "
        f"copy in --config.{key}.data_dir, no --config.{key}.path) and downloading is off ({off}): "
        f"{allow} to download it, or {offline_howto(name, key, cfg=cfg)}")
  try:
    with _locked(folder):
      paths = [_cached_file(remote, folder, name, key, cfg) for remote in found.files]
      if found.unpack and not target.is_dir():
        _unpack(found, paths, target)
  except OSError as e:
    raise KdJaxError(f"cannot write the download cache {folder} ({e}); point --config.{key}."
                     f"download_dir (or {DIR_ENV}) at a writable folder with room for {name}"
                     ) from e
  return target


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
  """Holds an exclusive lock on `folder` (created if need be) across processes."""
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / ".lock", "a") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"[data] waiting for another process to finish downloading into {folder}",
            file=sys.stderr, flush=True)
      fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _unpack(found: Release, paths, target: pathlib.Path) -> None:
  """Runs found.unpack into a temporary folder beside `target` and renames it `target`."""
  for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed process
    shutil.rmtree(stale, ignore_errors=True)
  temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
  print(f"[data] unpacking {', '.join(p.name for p in paths)} into {target}", file=sys.stderr,
        flush=True)
  try:
    found.unpack(paths, temporary)
    os.replace(temporary, target)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def _digest(path: pathlib.Path, algorithm: str) -> str:
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_file(remote: RemoteFile, path: pathlib.Path) -> None:
  """Raises unless the file at `path` has `remote`'s published checksum."""
  algorithm, published = remote.checksum
  actual = _digest(path, algorithm)
  if actual != published:
    raise KdJaxError(f"{path} has {algorithm} {actual}, not the published {published} of "
                     f"{remote.urls[0]}: {_DELETE_IT}, or replace it with the original file")


def _cached_file(remote: RemoteFile, folder: pathlib.Path, name: str, key: str,
                 cfg) -> pathlib.Path:
  """`remote`'s file in `folder`: checked if it is there, else downloaded, checked and renamed."""
  final = folder / remote.name
  if final.is_file():
    _check_file(remote, final)
    return final
  part = final.with_name(final.name + ".part")
  start = time.monotonic()
  url = _download(remote, part, name, key, cfg)
  algorithm, published = remote.checksum
  actual = _digest(part, algorithm)
  if actual != published:
    part.unlink()
    raise KdJaxError(f"{url} sent {remote.name} with {algorithm} {actual}, not the published "
                     f"{published}; deleted it (nothing kept): rerun to download it again, or copy "
                     f"the original file into {folder}/")
  os.replace(part, final)
  print(f"[data] downloaded {remote.name} ({_megabytes(final.stat().st_size)} in "
        f"{_duration(time.monotonic() - start)}), {algorithm} verified", file=sys.stderr,
        flush=True)
  return final


# ----------------------------------------------------------------------------------------------------
# HTTP


class _Failed(Exception):
  """A download from one URL failed; `reached` says whether the host answered at all."""

  def __init__(self, reason: str, reached: bool):
    super().__init__(reason)
    self.reached = reached


def _download(remote: RemoteFile, part: pathlib.Path, name: str, key: str, cfg) -> str:
  """Downloads `remote` into `part` from the first of its URLs that serves it; returns that URL."""
  failures, reached = [], False
  for url in remote.urls:
    try:
      _fetch(url, part, remote)
      return url
    except _Failed as e:
      failures.append(f"{url}: {e}")
      reached = reached or e.reached
  why = "; ".join(failures)
  received = part.stat().st_size if part.is_file() else 0
  if reached:
    kept = f" (the {_megabytes(received)} received are kept in {part})" if received else ""
    raise KdJaxError(f"cannot download {remote.name} for {name} ({why}): rerun the same command to "
                     f"try again{kept}, or {offline_howto(name, key, cfg=cfg)}")
  raise KdJaxError(f"cannot download {remote.name} for {name}: no connection ({why}); "
                   f"{offline_howto(name, key, cfg=cfg)}")


def _content_range_start(response) -> int:
  """The first byte of a 206 answer ('Content-Range: bytes 100-199/200' -> 100), or -1."""
  value = response.headers.get("Content-Range", "")
  try:
    return int(value.split()[1].split("-")[0])
  except (IndexError, ValueError):
    return -1


def _fetch(url: str, part: pathlib.Path, remote: RemoteFile) -> None:
  """Downloads `url` into `part`, continuing what `part` already holds, until it is complete.

  A connection cut short is continued (HTTP Range) up to _ATTEMPTS times; raises _Failed otherwise.
  """
  reached, reason = False, ""
  for _ in range(_ATTEMPTS):
    offset = part.stat().st_size if part.is_file() else 0
    if remote.size and offset > remote.size:
      offset = 0  # not this file: start over
    if remote.size and offset == remote.size:
      return  # complete, not yet checked
    headers = {"User-Agent": "kd_jax"}
    if offset:
      headers["Range"] = f"bytes={offset}-"
    try:
      response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=_TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
      if e.code == 416 and offset:
        return  # nothing after `offset`: the .part is whole (the checksum tells)
      raise _Failed(f"HTTP {e.code} {e.reason}", reached=True) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
      if reached:
        reason = _reason(e)
        continue
      raise _Failed(_reason(e), reached=False) from e
    reached, reason = True, ""
    with response:
      resumed = bool(offset) and response.status == 206 and _content_range_start(response) == offset
      if not resumed:
        offset = 0
      length = response.headers.get("Content-Length", "")
      total = offset + int(length) if length.isdigit() else remote.size
      meter = _Meter(remote.name, url, total, offset)
      with open(part, "ab" if resumed else "wb") as f:
        while True:
          try:
            chunk = response.read(_CHUNK_BYTES)
          except (OSError, http.client.HTTPException) as e:
            reason = _reason(e)
            break
          if not chunk:
            break
          f.write(chunk)
          meter.add(len(chunk))
    size = part.stat().st_size
    if (total and size == total) or (not total and not reason):
      return
    reason = reason or f"the connection closed after {size} of {total} bytes"
    print(f"[data] {remote.name}: {reason}; continuing", file=sys.stderr, flush=True)
  raise _Failed(f"{reason}, {_ATTEMPTS} times", reached=reached)


class _Meter:
  """One download's progress on stderr: a line at its start, then at most every PROGRESS_SECONDS
  the bytes received, a bar, the rate and the time left."""

  def __init__(self, name: str, url: str, total: int, done: int):
    self.name, self.total, self.done, self.first = name, total, done, done
    self.start = self.last = time.monotonic()
    size = f" ({_megabytes(total)})" if total else ""
    after = f", continuing after {_megabytes(done)}" if done else ""
    print(f"[data] downloading {name}{size} from {url}{after}", file=sys.stderr, flush=True)

  def add(self, count: int) -> None:
    self.done += count
    now = time.monotonic()
    if now - self.last >= progress.PROGRESS_SECONDS:
      self.last = now
      print(self.line(now), file=sys.stderr, flush=True)

  def line(self, now: float) -> str:
    rate = (self.done - self.first) / max(now - self.start, 1e-9)
    if not self.total:
      return f"[data] {self.name}: {_megabytes(self.done)}, {rate / 1e6:.1f} MB/s"
    filled = min(_BAR_WIDTH, _BAR_WIDTH * self.done // self.total)
    eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
    percent = 100 * self.done // self.total
    return (f"[data] {self.name} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            f"{_megabytes(self.done)} of {_megabytes(self.total)} ({percent}%), "
            f"{rate / 1e6:.1f} MB/s, ETA {eta}")
