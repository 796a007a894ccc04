"""kd_jax/files.py: whole-file writes through a temporary name and a rename."""

import json
import math
import os

import pytest

from kd_jax import files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  files.write_json(str(path), {"a": 1})
  with pytest.raises(ValueError):
    files.write_json(str(path), {"a": math.nan})
  assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]
