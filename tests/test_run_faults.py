"""Faults of whole runs through run.py, sweep.py and kd_jax.report: divergence, interrupted and
damaged workdirs, signals, bad input. Each test reproduces a failure that an earlier version handled
badly (a traceback, exit 0 with NaN results, a workdir that could never resume).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (DIVERGING_EXPERIMENT, REPO, SLOW, assert_one_line_error, run_cli,
                      start_run, tiny_config)
from kd_jax import KdJaxError, study

pytestmark = pytest.mark.e2e

CONFIG = "--config=tests/tiny_config.py"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run, made through run.py."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = run_cli([CONFIG, f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr
  return workdir


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)



# ---------------------------------------------------------------------------------------------------
# 1. Divergence

def test_diverged_run_stops_with_one_line_and_writes_no_results(tmp_path):
  workdir = tmp_path / "w"
  result = run_cli([CONFIG, f"--workdir={workdir}", "--config.teacher.optimizer.learning_rate=1e6",
                    "--config.teacher.steps=40"])
  line = assert_one_line_error(result, status=3)
  assert "diverged at step" in line and "teacher.optimizer.learning_rate" in line
  assert not (workdir / "results.json").exists()
  assert "diverged at step" in json.loads((workdir / "diverged.json").read_text())["error"]
  # Every checkpoint kept holds finite numbers, and metrics.jsonl is valid JSON throughout.
  manager = ocp.CheckpointManager(str(workdir / "teachers" / "train_0-1"))
  for step in manager.all_steps():
    for leaf in jax.tree.leaves(manager.restore(step)):
      assert np.isfinite(np.asarray(leaf, np.float64)).all()
  manager.close()
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in metrics.jsonl"))


def test_sweep_goes_on_past_a_diverged_run_and_flags_it(tmp_path, capsys):
  from kd_jax.experiments import sweep
  experiment = tmp_path / "diverging.py"
  experiment.write_text(DIVERGING_EXPERIMENT)
  root = tmp_path / "sweep"
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={experiment}", f"--workdir={root}", "--seeds=0"])
  assert exit_info.value.code == 3
  captured = capsys.readouterr()
  assert (root / "ok" / "seed0" / "results.json").exists()
  assert (root / "high_lr" / "seed0" / "diverged.json").exists()
  assert "DIVERGED" in captured.err and (root / "report" / "results.md").exists()
  assert captured.err.strip().splitlines()[-1].startswith("error: 1 of 2 runs diverged (high_lr/seed0)")
  # A rerun skips the diverged run rather than training it again.
  sweep.main([f"--config={experiment}", f"--workdir={root}", "--seeds=0", "--dry-run"])
  assert "high_lr/seed0: diverged earlier: skipped" in capsys.readouterr().out



# ---------------------------------------------------------------------------------------------------
# 2. Interrupted teacher saves

def _copy_run(finished, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(finished, workdir)
  return workdir


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_workdir_with_a_missing_or_damaged_teacher_member_resumes(finished, tmp_path, damage):
  workdir = _copy_run(finished, tmp_path)
  member = workdir / "teachers" / "member_1"
  if damage == "deleted":
    shutil.rmtree(member)  # as a kill between saving member_0 and member_1 leaves it
  else:
    for root, _, names in os.walk(member):
      for name in names:
        path = os.path.join(root, name)
        if f"{os.sep}d{os.sep}" in path:
          os.truncate(path, os.path.getsize(path) // 2)
  shutil.rmtree(workdir / "student")
  os.remove(workdir / "results.json")
  result = run_cli([CONFIG, f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr
  if damage == "truncated":
    assert "member_1 is unreadable" in result.stderr and "Traceback" not in result.stderr
  assert _results(workdir) == _results(finished)



# ---------------------------------------------------------------------------------------------------
# 3. Signals

def _start(workdir, *args):
  return start_run([CONFIG, f"--workdir={workdir}", "--config.teacher.steps=100000",
                    "--config.checkpoint_every_steps=1000", *args], stderr=subprocess.PIPE)


def _wait_for_training(process, workdir, timeout=240):
  start = time.time()
  while not (workdir / "metrics.jsonl").exists() or "compile_s" not in (
      workdir / "metrics.jsonl").read_text():
    assert process.poll() is None, process.communicate()
    assert time.time() - start < timeout
    time.sleep(0.1)


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM],
                                     [signal.SIGINT, signal.SIGINT]])
def test_signals_during_training_save_and_exit_130(tmp_path, signals):
  workdir = tmp_path / "w"
  process = _start(workdir)
  _wait_for_training(process, workdir)
  for signum in signals:
    process.send_signal(signum)
    time.sleep(0.05)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 130, out[-2000:] + err
  lines = [line for line in err.strip().splitlines() if line.strip()]
  assert "Traceback" not in err and 1 <= len(lines) <= len(signals), err
  if len(signals) == 1:
    assert "by a signal; checkpoint saved" in out and "rerun the same command" in err
    # The checkpoint of the step it stopped at (not a periodic one) is there to resume from.
    steps = [int(name) for name in os.listdir(workdir / "teachers" / "train_0-1") if name.isdigit()]
    assert steps and max(steps) % 1000 != 0



# ---------------------------------------------------------------------------------------------------
# 5. Files written whole

def test_damaged_config_json_is_one_line_for_run_and_sweep(finished, tmp_path, capsys):
  from kd_jax.experiments import sweep
  workdir = _copy_run(finished, tmp_path)
  (workdir / "config.json").write_text("")  # what an in-place write on a full disk left
  assert "config.json" in assert_one_line_error(run_cli([CONFIG, f"--workdir={workdir}"]))
  experiment = tmp_path / "diverging.py"
  experiment.write_text(DIVERGING_EXPERIMENT)
  (tmp_path / "sweep" / "ok" / "seed0").mkdir(parents=True)
  (tmp_path / "sweep" / "ok" / "seed0" / "config.json").write_text("")
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={experiment}", f"--workdir={tmp_path / 'sweep'}", "--seeds=0",
                "--dry-run"])
  err = capsys.readouterr().err.strip()
  assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "config.json" in err



# ---------------------------------------------------------------------------------------------------
# 6. Bounded run-ahead

@pytest.mark.parametrize("devices", [pytest.param(2, marks=SLOW), 4])
def test_quickstart_sized_run_on_forced_cpu_devices(tmp_path, devices):
  """The quickstart's shapes (3 digits CNN teachers in one step, MLP student), shorter, with the
  default log interval: it aborted with an all-reduce rendezvous timeout before run-ahead was bound
  (on 2 and on 4 devices; 2 runs with KD_JAX_SLOW_TESTS=1)."""
  workdir = tmp_path / "w"
  result = run_cli(["--config=configs/quickstart.py", f"--workdir={workdir}",
                    "--config.teacher.epochs=3", "--config.student.epochs=3"],
                   env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
                   timeout=500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert f"on {devices} cpu device(s)" in result.stdout
  assert (workdir / "results.json").exists()



# ---------------------------------------------------------------------------------------------------
# 7. Checks before the workdir exists

@pytest.mark.parametrize("key, value, message", [
    ("teacher.batch_size", 4096, "exceeds the"),
    ("student.init", "interpolate", "self-distillation"),
    ("evaluation.augmented_batches", -1, "augmented_batches"),
    ("evaluation.cka_examples", -1, "cka_examples"),
])
def test_bad_combinations_are_refused_before_the_workdir_is_made(tmp_path, key, value, message):
  config = tiny_config()
  section, _, field = key.rpartition(".")
  config[section][field] = value
  with pytest.raises(KdJaxError, match=message):
    study.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_batch_not_divisible_by_the_devices_is_refused_first(tmp_path):
  result = run_cli([CONFIG, f"--workdir={tmp_path / 'w'}", "--config.student.batch_size=33"],
                   env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert "not divisible by the 2 devices" in assert_one_line_error(result)
  assert not os.path.exists(tmp_path / "w")



# ---------------------------------------------------------------------------------------------------
# 9. One-line errors, exit 2

BROKEN_CONFIGS = {
    "syntax": "def get_config(:\n  pass\n",
    "no_get_config": "CONFIG = 1\n",
    "raises": "def get_config():\n  return {}['missing']\n",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
@pytest.mark.parametrize("entry", ["run.py", "sweep.py"])
def test_broken_config_files_are_one_line(tmp_path, kind, entry):
  path = tmp_path / f"{kind}.py"
  text = BROKEN_CONFIGS[kind]
  if entry == "sweep.py":
    text = "VARIANTS = ('a',)\n" + text.replace("get_config()", "get_config(variant)")
  path.write_text(text)
  result = subprocess.run([sys.executable, entry, f"--config={path}", f"--workdir={tmp_path / 'w'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert str(path) in assert_one_line_error(result)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("where", ["file", "read_only"])
def test_unusable_workdirs_are_one_line(tmp_path, where):
  if where == "file":
    workdir = tmp_path / "w"
    workdir.write_text("")
  else:
    workdir = "/proc/kd_jax_test/w"  # a read-only file system (chmod does not stop root)
  assert str(workdir) in assert_one_line_error(run_cli([CONFIG, f"--workdir={workdir}"]))


def test_report_out_pointing_at_a_file_is_one_line(finished, tmp_path):
  out = tmp_path / "out"
  out.write_text("")
  result = subprocess.run([sys.executable, "-m", "kd_jax.report", str(finished), f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert str(out) in assert_one_line_error(result)
