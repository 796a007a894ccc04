"""kd_jax/workdir.py: results refused with non-finite numbers, the workdir lock, and a workdir's
identity across config fields added later."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, run_cli, tiny_config
from kd_jax import files
from kd_jax import workdir as workdir_lib
from kd_jax.errors import DivergedError

CONFIG = "--config=tests/tiny_config.py"


def test_results_with_non_finite_numbers_are_refused(tmp_path):
  with pytest.raises(DivergedError, match="student.test_kl"):
    workdir_lib.write_results(str(tmp_path), {"student": {"test_kl": math.nan, "test_nll": 1.0}})
  assert not (tmp_path / "results.json").exists()
  assert (tmp_path / "diverged.json").exists()
  with pytest.raises(ValueError):
    files.write_json(str(tmp_path / "x.json"), {"a": math.inf})


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lock(workdir, pid):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))


@pytest.mark.e2e
def test_a_workdir_in_use_is_refused_with_one_line(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path / "w", holder.pid)
    line = assert_one_line_error(run_cli([CONFIG, f"--workdir={tmp_path / 'w'}"]))
    assert f"in use by process {holder.pid}" in line
    assert os.listdir(tmp_path / "w") == [workdir_lib.LOCK_FILE]
  finally:
    holder.kill()
    holder.wait()


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  _write_lock(tmp_path / "w", _dead_pid())
  workdir_lib.lock(str(tmp_path / "w"))
  assert "no longer runs" in capsys.readouterr().err
  holder = json.loads((tmp_path / "w" / workdir_lib.LOCK_FILE).read_text())
  assert holder["pid"] == os.getpid()
  workdir_lib.release(str(tmp_path / "w"))
  assert not (tmp_path / "w" / workdir_lib.LOCK_FILE).exists()


def test_a_run_saved_before_a_field_existed_resumes_unless_the_field_is_set():
  # config.json of a run made before distill.cache_teacher_logits existed: it lacks the key.
  current = workdir_lib.config_dict(tiny_config())
  saved = json.loads(json.dumps(current))
  del saved["distill"]["cache_teacher_logits"]
  assert workdir_lib.config_differences(saved, current) == []
  current["distill"]["cache_teacher_logits"] = not current["distill"]["cache_teacher_logits"]
  assert [key for key, _, _ in workdir_lib.config_differences(saved, current)] == [
      "distill.cache_teacher_logits"]
  # A saved key that no longer exists still counts: the old run computed something else.
  saved["distill"]["retired_option"] = 1
  assert "distill.retired_option" in [k for k, _, _ in workdir_lib.config_differences(saved, current)]
