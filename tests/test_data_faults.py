"""kd_jax/data (load_dataset, the readers of sources.py) under faults: data this user may not
read."""

import builtins
import pickle

import numpy as np
import pytest

from kd_jax import KdJaxError, data
from kd_jax import config as kd_config


def _unreadable_under(monkeypatch, folder):
  """open() of any file under `folder` fails as it does without read permission."""
  real_open = builtins.open

  def guarded(file, *args, **kwargs):
    if str(file).startswith(str(folder)):
      raise PermissionError(13, "Permission denied", str(file))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", guarded)


def _idx(folder):
  for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"):
    (folder / stem).write_bytes(b"")
  return folder / "train-images-idx3-ubyte"


def _cifar10(folder):
  batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    (folder / name).write_bytes(batch)
  return folder / "data_batch_1"


@pytest.mark.parametrize("source, make", [("idx", _idx), ("cifar_pickle", _cifar10)])
def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, monkeypatch, source, make):
  first = make(tmp_path)
  _unreadable_under(monkeypatch, tmp_path)
  with pytest.raises(KdJaxError) as error:
    data.load_dataset(kd_config.data_config(name="", source=source, path=str(tmp_path)))
  assert str(error.value) == (f"cannot read {first} (Permission denied); the data must be readable "
                              "by this user: check its permissions.")
