"""kd_jax/files.py under faults: whole-file writes get the umask's mode, as open() gives."""

import os
import stat

import pytest

from kd_jax import files


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_of_the_umask(tmp_path, umask):
  previous = os.umask(umask)
  try:
    files.write_json(str(tmp_path / "results.json"), {"a": 1})
    with files.atomic_path(str(tmp_path / "plot.png")) as temporary:
      with open(temporary, "wb") as f:
        f.write(b"png")
    with open(tmp_path / "plain", "w"):
      pass
  finally:
    os.umask(previous)
  for name in ("results.json", "plot.png", "plain"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name
  assert sorted(os.listdir(tmp_path)) == ["plain", "plot.png", "results.json"]
