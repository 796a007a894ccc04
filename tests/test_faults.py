"""Fault injection: divergence, interrupted and damaged workdirs, signals, failed writes, locks, bad
input. Each test reproduces a failure that an earlier version handled badly (a traceback, exit 0 with
NaN results, a workdir that could never resume); the issue-9 numbering is in the test names' comments.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, run_cli, start_run, tiny_config
from kd_jax import KdJaxError, checkpoint, files, loop, progress, runtime, study
from kd_jax import workdir as workdir_lib
from kd_jax.errors import DivergedError, Interrupted
from kd_jax.experiments import cli

CONFIG = "--config=tests/tiny_config.py"


def _error_lines(result):
  return [line for line in result.stderr.strip().splitlines() if line.strip()]


def _assert_one_line_error(result, status=2):
  lines = _error_lines(result)
  assert result.returncode == status, result.stdout[-2000:] + result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


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
  line = _assert_one_line_error(result, status=3)
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


class _Manager:
  """A CheckpointManager stand-in that records the steps saved."""

  def __init__(self, directory):
    self.real = checkpoint.make_manager(directory)
    self.directory = self.real.directory

  def save(self, step, args, force):
    assert np.isfinite(np.asarray(args.item["w"])).all(), f"non-finite state saved at {step}"
    return self.real.save(step, args=args, force=force)

  def wait_until_finished(self):
    self.real.wait_until_finished()


class _Log:
  def __init__(self):
    self.records = []

  def write(self, record):
    self.records.append(record)


def _counting_step(nan_at=None):
  """A step whose state counts steps; the loss is NaN from step `nan_at` (1-based) on."""

  @jax.jit
  def step(state):
    new = {"w": state["w"] + 1.0}
    bad = jnp.logical_and(nan_at is not None, new["w"][0] >= (nan_at or 0))
    return new, {"loss": jnp.where(bad, jnp.nan, 1.0), "param_norm": jnp.abs(new["w"]).sum()}

  return step


def _fit(step_fn, tmp_path, total=20, checkpoint_every=4, start=0, state=None, **kwargs):
  manager = _Manager(tmp_path / "ckpt")
  phase = loop.Phase(name="test", total=total, steps_per_epoch=5, images_per_step=1, hint="lr")
  state = {"w": jnp.zeros((2,))} if state is None else state
  settings = loop.Settings(log_every=kwargs.pop("log_every", 10), checkpoint_every=checkpoint_every,
                           **kwargs)
  return loop.fit(step_fn, state, phase=phase, manager=manager, start=start, log=_Log(),
                  settings=settings), manager


def test_loop_stops_at_the_first_non_finite_step_and_keeps_finite_checkpoints(tmp_path):
  with pytest.raises(DivergedError, match=r"diverged at step 7/20: loss nan.*last checkpoint.*step 4"):
    _fit(_counting_step(nan_at=7), tmp_path)
  assert sorted(ocp.CheckpointManager(str(tmp_path / "ckpt")).all_steps()) == [4]


def test_results_with_non_finite_numbers_are_refused(tmp_path):
  with pytest.raises(DivergedError, match="student.test_kl"):
    workdir_lib.write_results(str(tmp_path), {"student": {"test_kl": math.nan, "test_nll": 1.0}})
  assert not (tmp_path / "results.json").exists()
  assert (tmp_path / "diverged.json").exists()
  with pytest.raises(ValueError):
    files.write_json(str(tmp_path / "x.json"), {"a": math.inf})


DIVERGING_EXPERIMENT = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import tiny_config

VARIANTS = ("ok", "high_lr")


def get_config(variant):
  config = tiny_config()
  if variant == "high_lr":
    config.student.optimizer.learning_rate = 1e6
  return config
"""


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
# 2. Interrupted teacher saves, 4. damaged checkpoints

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


def _damage(step_dir, kind):
  item = os.path.join(step_dir, "default")
  if kind == "truncated_data":
    for root, _, names in os.walk(item):
      for name in names:
        if f"{os.sep}d" in root:
          path = os.path.join(root, name)
          os.truncate(path, os.path.getsize(path) // 2)
  elif kind == "no_metadata":
    os.remove(os.path.join(item, "_METADATA"))
  elif kind == "empty_manifest":
    open(os.path.join(item, "manifest.ocdbt"), "w").close()
  elif kind == "no_item":
    shutil.rmtree(item)


@pytest.mark.parametrize("kind", ["truncated_data", "no_metadata", "empty_manifest", "no_item"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, kind):
  state = {"w": jnp.arange(3.0), "b": {"c": jnp.ones(2)}}
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save_state(manager, 1, state)
  checkpoint.save_state(manager, 2, jax.tree.map(lambda x: x + 1, state))
  manager.close()
  _damage(str(tmp_path / "2"), kind)
  manager = checkpoint.make_manager(tmp_path)
  restored, step = checkpoint.restore_latest(manager, state)
  # A checkpoint that still restores (a missing _METADATA is not needed) must restore exactly.
  expected = state if step == 1 else jax.tree.map(lambda x: x + 1, state)
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  err = capsys.readouterr().err
  if step == 1:
    assert len(err.strip().splitlines()) == 1 and "resuming from step 1" in err
    assert (tmp_path / "2.unreadable").is_dir()
    # The manager goes on saving where it fell back to.
    checkpoint.save_state(manager, 2, state)
    assert manager.all_steps() == [1, 2]
  manager.close()


def test_no_readable_checkpoint_is_one_error(tmp_path):
  state = {"w": jnp.arange(3.0)}
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save_state(manager, 1, state)
  manager.close()
  _damage(str(tmp_path / "1"), "empty_manifest")
  with pytest.raises(KdJaxError, match=r"no readable checkpoint in .*delete"):
    checkpoint.restore_latest(checkpoint.make_manager(tmp_path), state)


# ---------------------------------------------------------------------------------------------------
# 3. Signals

@pytest.fixture
def handlers():
  previous = {s: signal.getsignal(s) for s in runtime.STOP_SIGNALS}
  runtime.install_signal_handlers()
  runtime.reset()
  yield
  runtime.reset()
  for s, handler in previous.items():
    signal.signal(s, handler)


def test_a_signal_in_the_loop_saves_and_stops_between_steps(tmp_path, handlers, capsys):
  base = _counting_step()

  def step(state):
    if int(state["w"][0]) == 5:  # the signal arrives while step 6 is being dispatched
      os.kill(os.getpid(), signal.SIGTERM)
    return base(state)

  with pytest.raises(Interrupted):
    _fit(step, tmp_path)
  assert "stopped at step 6/20 by a signal; checkpoint saved" in capsys.readouterr().out
  assert sorted(ocp.CheckpointManager(str(tmp_path / "ckpt")).all_steps()) == [4, 6]


def test_a_signal_outside_the_loop_stops_at_once(handlers):
  with pytest.raises(Interrupted):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # evaluation, data loading: nothing to save


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
# 5. Files written whole; failed checkpoint writes

def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  files.write_json(str(path), {"a": 1})
  with pytest.raises(ValueError):
    files.write_json(str(path), {"a": math.nan})
  assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]


def test_damaged_config_json_is_one_line_for_run_and_sweep(finished, tmp_path, capsys):
  from kd_jax.experiments import sweep
  workdir = _copy_run(finished, tmp_path)
  (workdir / "config.json").write_text("")  # what an in-place write on a full disk left
  assert "config.json" in _assert_one_line_error(run_cli([CONFIG, f"--workdir={workdir}"]))
  experiment = tmp_path / "diverging.py"
  experiment.write_text(DIVERGING_EXPERIMENT)
  (tmp_path / "sweep" / "ok" / "seed0").mkdir(parents=True)
  (tmp_path / "sweep" / "ok" / "seed0" / "config.json").write_text("")
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={experiment}", f"--workdir={tmp_path / 'sweep'}", "--seeds=0",
                "--dry-run"])
  err = capsys.readouterr().err.strip()
  assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "config.json" in err


def test_a_failed_checkpoint_write_stops_the_loop_at_once(tmp_path):
  calls = []
  base = _counting_step()

  def step(state):
    calls.append(1)
    if len(calls) == 5:  # the checkpoint folder disappears behind a file (a lost mount, say)
      shutil.rmtree(tmp_path / "ckpt")
      (tmp_path / "ckpt").write_text("")
    return base(state)

  with pytest.raises(checkpoint.CheckpointWriteError, match=r"could not write checkpoint .*/8"):
    _fit(step, tmp_path)
  assert len(calls) == 8  # stopped at the failed save, not at the end of the phase


# ---------------------------------------------------------------------------------------------------
# 6. Bounded run-ahead

def test_the_host_stays_at_most_max_steps_ahead(tmp_path):
  dispatched, fetched = [], []
  base = _counting_step()

  def step(state):
    dispatched.append(len(dispatched) + 1)
    new, metrics = base(state)
    return new, {**metrics, "count": new["w"][0]}

  original = jax.device_get

  def device_get(tree):
    value = original(tree)
    if isinstance(value, dict) and "count" in value:
      fetched.append(int(value["count"]))
      assert len(dispatched) - fetched[-1] <= 3 or fetched[-1] == 1
    return value

  jax.device_get = device_get
  try:
    _fit(step, tmp_path, total=40, checkpoint_every=1000, log_every=1000, max_steps_ahead=3)
  finally:
    jax.device_get = original
  assert fetched == list(range(1, 41))


@pytest.mark.parametrize("devices", [2, 4])
def test_quickstart_sized_run_on_forced_cpu_devices(tmp_path, devices):
  """The quickstart's shapes (3 digits CNN teachers in one step, MLP student), shorter, with the
  default log interval: it aborted with an all-reduce rendezvous timeout before run-ahead was bound."""
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
  assert "not divisible by the 2 devices" in _assert_one_line_error(result)
  assert not os.path.exists(tmp_path / "w")


# ---------------------------------------------------------------------------------------------------
# 8. Workdir lock

def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lock(workdir, pid):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))


def test_a_workdir_in_use_is_refused_with_one_line(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path / "w", holder.pid)
    line = _assert_one_line_error(run_cli([CONFIG, f"--workdir={tmp_path / 'w'}"]))
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
  assert str(path) in _assert_one_line_error(result)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("where", ["file", "read_only"])
def test_unusable_workdirs_are_one_line(tmp_path, where):
  if where == "file":
    workdir = tmp_path / "w"
    workdir.write_text("")
  else:
    workdir = "/proc/kd_jax_test/w"  # a read-only file system (chmod does not stop root)
  assert str(workdir) in _assert_one_line_error(run_cli([CONFIG, f"--workdir={workdir}"]))


def test_report_out_pointing_at_a_file_is_one_line(finished, tmp_path):
  out = tmp_path / "out"
  out.write_text("")
  result = subprocess.run([sys.executable, "-m", "kd_jax.report", str(finished), f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert str(out) in _assert_one_line_error(result)


# ---------------------------------------------------------------------------------------------------
# One config path

@pytest.mark.parametrize("text, expected", [("t", True), ("false", False), ("1", True)])
def test_run_and_sweep_parse_booleans_alike(tmp_path, text, expected):
  from kd_jax import config as kd_config
  from kd_jax.experiments import sweep
  by_run = cli.apply_overrides(kd_config.default_config(),
                               [("evaluation.independent_student", text)])
  experiment = tmp_path / "diverging.py"
  experiment.write_text(DIVERGING_EXPERIMENT)
  (by_sweep, _) = sweep.plan_experiments(
      [sweep.Experiment.load(str(experiment), str(tmp_path / "sweep"))], [0],
      [("evaluation.independent_student", text)])
  assert by_run.evaluation.independent_student is expected
  assert by_sweep.config.evaluation.independent_student is expected


def test_a_section_takes_a_dict_with_all_its_keys():
  from kd_jax import config as kd_config
  replacement = kd_config.optimizer_config(name="adam", learning_rate=0.01).to_dict()
  config = cli.apply_overrides(kd_config.default_config(), [("teacher.optimizer", str(replacement))])
  assert config.teacher.optimizer.to_dict() == replacement
  with pytest.raises(KdJaxError, match="missing: final_learning_rate"):
    cli.apply_overrides(kd_config.default_config(), [("teacher.optimizer", "{'name': 'adam'}")])


def test_a_phase_between_log_lines_still_shows_progress(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
  _fit(_counting_step(), tmp_path, total=6, checkpoint_every=1000, log_every=1000)
  out = capsys.readouterr().out
  assert "[test] step 3/6 |" in out and "ETA" in out
