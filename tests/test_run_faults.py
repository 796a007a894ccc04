"""Whole runs of run.py meeting faults a new user meets on the quickstart: signals while JAX compiles,
a finished run run again, a disk that fills up, one-class data."""

import os
import signal
import subprocess

import pytest

from conftest import start_run

QUICKSTART = "--config=configs/quickstart.py"


def _signal_after_plan(workdir, cache, delay: float, signum=signal.SIGTERM):
  """Starts the quickstart with an empty compilation cache, sends `signum` `delay` seconds after the
  study plan's last line (while the teachers' first programs compile); returns (status, stderr)."""
  process = start_run([QUICKSTART, f"--workdir={workdir}"],
                      {"KD_JAX_COMPILATION_CACHE": str(cache)}, stderr=subprocess.PIPE)
  try:
    for line in process.stdout:
      if "forward passes" in line:
        break
    else:
      pytest.fail(f"the run ended before its plan: {process.stderr.read()}")
    try:
      process.wait(timeout=delay)
      pytest.fail(f"the run ended before the signal: {process.stderr.read()}")
    except subprocess.TimeoutExpired:
      pass
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, stderr


@pytest.mark.e2e
@pytest.mark.parametrize("delay", [2.0, 3.0, 4.0])
def test_sigterm_while_the_first_programs_compile_exits_130(tmp_path, delay):
  # Python's finalization with XLA's threads about crashed the process after the line (exit 139).
  workdir = tmp_path / "run"
  status, stderr = _signal_after_plan(workdir, tmp_path / "cache", delay)
  assert status == 130, stderr
  assert stderr.strip().splitlines() == [
      f"interrupted; rerun the same command to resume from {workdir}"], stderr
  assert not (workdir / ".lock").exists()
