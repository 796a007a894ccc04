"""Whole runs of run.py meeting faults a new user meets on the quickstart: signals while JAX
compiles, a finished run run again, bad sizes, one-class or unreadable data, a disk filling up."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from conftest import REPO, TEST_COMPILATION_CACHE, run_cli, start_run

QUICKSTART = "--config=configs/quickstart.py"
TINY = "--config=tests/tiny_config.py"


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


@pytest.mark.e2e
def test_a_finished_run_prints_its_results_and_force_evaluation_evaluates_again(tmp_path):
  workdir = tmp_path / "run"
  first = run_cli([TINY, f"--workdir={workdir}"])
  assert first.returncode == 0, first.stderr
  table = first.stdout[first.stdout.index("model "):]
  metrics = (workdir / "metrics.jsonl").read_text()
  results = (workdir / "results.json").read_text()

  again = run_cli([TINY, f"--workdir={workdir}"])
  assert again.returncode == 0 and again.stderr == "", again.stderr
  assert again.stdout == (f"workdir {workdir} holds this run, finished; its results.json follows "
                          f"(rerun with --force_evaluation to evaluate it again)\n{table}")
  assert (workdir / "metrics.jsonl").read_text() == metrics
  assert (workdir / "results.json").read_text() == results
  assert not (workdir / ".lock").exists()

  forced = run_cli([TINY, f"--workdir={workdir}", "--force_evaluation"])
  assert forced.returncode == 0, forced.stderr
  assert forced.stdout.endswith(table) and "(resuming)" in forced.stdout
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(records) > len(metrics.splitlines())
  assert records[-1]["phase"] == "evaluation"
  assert json.loads((workdir / "results.json").read_text()) == json.loads(results)


@pytest.mark.e2e
@pytest.mark.parametrize("override, message", [
    ("--config.student.steps=-1", "error: config.student.steps=-1 must be >= 0"),
    ("--config.evaluation.test_size=1000",
     "error: config.evaluation.test_size=1000 exceeds the 360 test examples"),
])
def test_sizes_that_mean_nothing_are_one_line_before_the_workdir(tmp_path, override, message):
  result = run_cli([QUICKSTART, f"--workdir={tmp_path / 'run'}", override])
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), result.stderr
  assert not (tmp_path / "run").exists()


def _image_folder(root, counts):
  """root/{train,test}/<class>/<i>.png, 8x8 grayscale, `counts` = {(split, class): images}."""
  rng = np.random.default_rng(0)
  for (split, name), count in counts.items():
    folder = root / split / name
    folder.mkdir(parents=True)
    for i in range(count):
      PIL.Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
  return root


@pytest.mark.e2e
def test_an_image_folder_of_one_class_is_one_line_before_the_workdir(tmp_path):
  data = _image_folder(tmp_path / "data", {("train", "cat"): 40, ("test", "cat"): 10})
  result = run_cli([TINY, f"--workdir={tmp_path / 'run'}", "--config.data.source=image_folder",
                    f"--config.data.path={data}", "--config.data.grayscale=true"],
                   env_extra={"KD_JAX_CACHE": str(tmp_path / "cache")})
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: config.data holds 1 class; classification "
                                                 "needs at least 2"), result.stderr
  assert not (tmp_path / "run").exists()


def _without_read_override(args, env_extra):
  """`python run.py ARGS` as a user whom file permissions bind: root's override of them dropped with
  capsh (the test is skipped where neither that nor a non-root user is available)."""
  command = [sys.executable, "run.py", *args]
  if os.geteuid() == 0:
    if shutil.which("capsh") is None:
      pytest.skip("needs a non-root user or capsh to make a folder unreadable")
    command = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
               " ".join(f"'{part}'" for part in command)]
  env = {**os.environ, "KD_JAX_COMPILATION_CACHE": TEST_COMPILATION_CACHE, **env_extra}
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("pipeline, unreadable", [
    ("auto", "train/cat"), ("memory", "train/cat"), ("stream", "train/cat"),
    ("memory", "test/dog/3.png")])
def test_unreadable_data_is_one_line_naming_it(tmp_path, pipeline, unreadable):
  data = _image_folder(tmp_path / "data", {(split, name): 40 for split in ("train", "test")
                                           for name in ("cat", "dog")})
  (data / unreadable).chmod(0)
  try:
    result = _without_read_override(
        [TINY, f"--workdir={tmp_path / 'run'}", "--config.data.source=image_folder",
         f"--config.data.path={data}", "--config.data.grayscale=true",
         f"--config.data.pipeline={pipeline}", "--config.data.stream.crop_size=8",
         "--config.evaluation.augmented_batches=0"],
        {"KD_JAX_CACHE": str(tmp_path / "cache")})
  finally:
    (data / unreadable).chmod(0o755)
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines == [f"error: cannot read {data / unreadable} (Permission denied); the data must be "
                   "readable by this user: check its permissions."], result.stderr
  assert not (tmp_path / "run").exists()


def _run_with_file_size_limit(args, limit: int):
  """`python run.py ARGS` whose writes past `limit` bytes per file fail (EFBIG), as on a full disk:
  RLIMIT_FSIZE with SIGXFSZ ignored, set by a small Python that then execs run.py; the compilation
  cache off (its files are larger)."""
  limited = (f"import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
             f"os.execv(sys.executable, [sys.executable, 'run.py', *sys.argv[1:]])")
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
  return subprocess.run([sys.executable, "-c", limited, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_a_full_disk_during_training_is_one_line(tmp_path):
  # config.json and metrics.jsonl fit in 64 kB, the teachers' first checkpoint (150 kB) does not.
  result = _run_with_file_size_limit([TINY, f"--workdir={tmp_path / 'run'}"], 64_000)
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: could not write checkpoint "), (
      f"{len(lines)} lines:\n" + result.stderr[-3000:])


@pytest.mark.e2e
def test_a_full_disk_before_config_json_leaves_no_workdir(tmp_path):
  result = _run_with_file_size_limit([TINY, f"--workdir={tmp_path / 'run'}"], 1_000)
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  lines = result.stderr.strip().splitlines()
  expected = f"error: cannot write to workdir {tmp_path / 'run'} ("
  assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
  assert not (tmp_path / "run").exists()
