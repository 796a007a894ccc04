"""Shared helpers: tiny configs on scikit-learn digits and a way to run `run.py` as a user would."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kd_jax.experiments import verdicts
from tiny_config import tiny_config  # noqa: F401 (the tests' shared tiny study)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


TEST_COMPILATION_CACHE = os.path.join(tempfile.gettempdir(), "kd_jax_test_xla")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
  """In-process runs share compiled programs too (teacher training is the same for many variants)."""
  import jax
  jax.config.update("jax_compilation_cache_dir", TEST_COMPILATION_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _run_env(env_extra=None) -> dict:
  env = dict(os.environ)
  # Processes of one test session share compiled programs (the cache is keyed by program and devices).
  env.setdefault("KD_JAX_COMPILATION_CACHE", TEST_COMPILATION_CACHE)
  env.update(env_extra or {})
  return env


def run_cli(args, env_extra=None, timeout=300):
  """Runs `python run.py ARGS` in the repo; returns the CompletedProcess."""
  return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                        env=_run_env(env_extra), capture_output=True, text=True, timeout=timeout)


def start_run(args, env_extra=None, stderr=subprocess.STDOUT):
  """Starts `python run.py ARGS` in the repo without waiting; its stdout (and by default its
  stderr) piped."""
  return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=_run_env(env_extra),
                          stdout=subprocess.PIPE, stderr=stderr, text=True)


def kill_when_exists(path, process, timeout=240):
  """SIGKILLs `process` as soon as `path` exists (a checkpoint it writes); fails the test if the run
  ends first or `path` does not appear within `timeout` seconds."""
  start = time.time()
  while not os.path.exists(path):
    if process.poll() is not None:
      pytest.fail(f"run finished before {path} appeared:\n{process.stdout.read()}")
    if time.time() - start > timeout:
      process.kill()
      pytest.fail(f"{path} did not appear in {timeout}s")
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()


def run_distributed(args, num_processes: int, devices_per_process: int, timeout=300):
  """One run as `num_processes` local processes of JAX's multi-process runtime (`run.py
  --distributed`, a coordinator on a free port), each with `devices_per_process` forced CPU devices.
  Returns (return codes, outputs)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
         "JAX_PLATFORMS": "cpu"}
  processes = [start_run([*args, "--distributed", f"--coordinator_address=localhost:{port}",
                          f"--num_processes={num_processes}", f"--process_id={i}"], env)
               for i in range(num_processes)]
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  return [p.returncode for p in processes], outputs


def loss_curves_devices_results(workdir):
  """A finished run's loss per logged step by phase, device counts of its start records, results."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  curves = {}
  for r in records:
    if "loss" in r:
      curves.setdefault(r["phase"], []).append(r["loss"])
  devices = [r["devices"] for r in records if r.get("event") == "start"]
  with open(os.path.join(workdir, "results.json")) as f:
    return curves, devices, json.load(f)


@pytest.fixture
def tiny():
  return tiny_config()


def write_suite_run(root, experiment, variant, seed, student=None, ensemble=None, teachers=None,
                    finished=True):
  """A run of a suite workdir (verdicts.run_dir) with these results (unfinished: config.json)."""
  workdir = verdicts.run_dir(str(root), experiment, variant, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed}, f)
  if finished:
    results = {"teachers": teachers or [{"test_accuracy": 0.8}], "ensemble": ensemble or
               {"test_accuracy": 0.8}, "student": student or {}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
      # json writes NaN as the token NaN, as Python's json does for results of a diverged run.
      json.dump(results, f)
