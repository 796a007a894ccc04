"""kd_jax/workdir.py under faults: a full disk while a new workdir is prepared."""

import errno
import os

import pytest

from conftest import tiny_config
from kd_jax import KdJaxError, files
from kd_jax import workdir as workdir_lib


def _full_disk(monkeypatch):
  def write_json(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
  monkeypatch.setattr(files, "write_json", write_json)


def test_a_full_disk_before_config_json_removes_the_new_workdir(tmp_path, monkeypatch):
  _full_disk(monkeypatch)
  workdir = tmp_path / "new" / "run"
  with pytest.raises(KdJaxError, match="cannot write to workdir .*No space left on device"):
    workdir_lib.prepare(str(workdir), tiny_config())
  assert not workdir.exists()


def test_a_full_disk_before_config_json_leaves_a_given_empty_folder_empty(tmp_path, monkeypatch):
  _full_disk(monkeypatch)
  with pytest.raises(KdJaxError, match="No space left on device"):
    workdir_lib.prepare(str(tmp_path), tiny_config())
  assert os.listdir(tmp_path) == []
