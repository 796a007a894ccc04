"""A signal that reaches one process of a multi-process run stops them all at the same step.

SIGTERM (or SIGINT) goes to process 1 only, while the student trains (2 processes x 1 CPU device,
JAX's multi-process runtime): both processes save the same checkpoint and exit with status 130, and
the rerun finishes with the results of a run that was never stopped. First, in one process, the
loop's side of it: with votes, the votes decide where it stops, not the process's own flag.
"""

import json
import os
import signal
import socket
import threading
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from conftest import start_run
from kd_jax import checkpoint, loop, runtime
from kd_jax.errors import Interrupted


class _Log:
  def write(self, record):
    pass


def _fit_with_votes(tmp_path, monkeypatch, outcomes, own_flag):
  """loop.fit over 40 counting steps as in a multi-process run whose votes come out as `outcomes`
  (one per vote, then False) while this process's own flag is `own_flag`; returns the steps at
  which votes were started."""
  voted_at = []
  state = {"w": jnp.zeros(())}

  def vote():
    voted_at.append(int(state["w"]))
    return jnp.asarray(outcomes[len(voted_at) - 1] if len(voted_at) <= len(outcomes) else False)

  monkeypatch.setattr(runtime, "multiprocess", lambda: True)
  monkeypatch.setattr(runtime, "stop_vote", vote)
  monkeypatch.setattr(runtime, "stop_requested", lambda: own_flag)
  increment = jax.jit(lambda s: ({"w": s["w"] + 1}, {"loss": s["w"] * 0.0}))

  def step(s):
    new, metrics = increment(s)
    state["w"] = new["w"]  # (the step about to be voted after)
    return new, metrics

  phase = loop.Phase(name="test", total=40, steps_per_epoch=10, images_per_step=1)
  settings = loop.Settings(log_every=100, checkpoint_every=100)
  loop.fit(step, {"w": jnp.zeros(())}, phase=phase, manager=checkpoint.make_manager(
      str(tmp_path / "ckpt")), start=0, log=_Log(), settings=settings)
  return voted_at


def test_with_votes_the_loop_stops_where_a_vote_says_and_saves_that_step(tmp_path, monkeypatch):
  # The second vote, started after step 8, says a signal reached some process (not this one): it is
  # read with step 8's metrics once step 12 is in flight (4 ahead), and the loop stops there.
  with pytest.raises(Interrupted):
    _fit_with_votes(tmp_path, monkeypatch, [False, True], own_flag=False)
  assert ocp.CheckpointManager(str(tmp_path / "ckpt")).all_steps() == [12]


def test_with_votes_the_processs_own_flag_alone_does_not_stop_it(tmp_path, monkeypatch):
  # Every vote (every STOP_VOTE_EVERY steps, and once at the end) says no: the phase ends.
  voted_at = _fit_with_votes(tmp_path, monkeypatch, [], own_flag=True)
  every = loop.STOP_VOTE_EVERY
  assert voted_at == [*range(every, 41, every), 40]
  assert ocp.CheckpointManager(str(tmp_path / "ckpt")).all_steps() == [40]

# Enough student steps that the signal lands mid-phase; checkpoints only at the end and on the stop.
STUDENT_STEPS = 400
ARGS = ["--config=tests/tiny_config.py", "--config.teacher.steps=8",
        f"--config.student.steps={STUDENT_STEPS}", "--config.log_every_steps=500",
        "--config.checkpoint_every_steps=100000"]
STARTED = "[student] first step"
STOP_TIMEOUT = 120


class _Processes:
  """`run.py ARGS --distributed` as 2 local processes of 1 CPU device, their outputs read as they
  come (each into a list of lines) so that a test can wait for a line."""

  def __init__(self, args, num_processes=2):
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    self.processes = [start_run([*args, "--distributed", f"--coordinator_address=localhost:{port}",
                                 f"--num_processes={num_processes}", f"--process_id={i}"], env)
                      for i in range(num_processes)]
    self.lines = [[] for _ in self.processes]
    self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                    for i in range(num_processes)]
    for reader in self.readers:
      reader.start()

  def _read(self, index):
    for line in self.processes[index].stdout:
      self.lines[index].append(line)

  def output(self, index) -> str:
    return "".join(self.lines[index])

  def wait_for(self, index, text, timeout=300):
    start = time.time()
    while not any(text in line for line in self.lines[index]):
      if any(p.poll() is not None for p in self.processes):
        pytest.fail(f"a process ended before {text!r}:\n" + self.outputs())
      if time.time() - start > timeout:
        pytest.fail(f"no {text!r} from process {index} in {timeout}s:\n" + self.outputs())
      time.sleep(0.02)

  def wait(self, timeout):
    """The return codes, or None for each process still running after `timeout` seconds."""
    deadline = time.time() + timeout
    for p in self.processes:
      try:
        p.wait(timeout=max(deadline - time.time(), 0.1))
      except Exception:  # pylint: disable=broad-except (still running: reported as None)
        pass
    for reader in self.readers:
      reader.join(timeout=5)
    return [p.poll() for p in self.processes]

  def kill(self):
    for p in self.processes:
      if p.poll() is None:
        p.kill()
        p.wait()

  def outputs(self) -> str:
    return "\n".join(f"--- process {i}:\n{self.output(i)[-3000:]}" for i in range(len(self.lines)))


def _run_to_the_end(args):
  run = _Processes(args)
  try:
    returncodes = run.wait(timeout=600)
    assert returncodes == [0, 0], run.outputs()
  finally:
    run.kill()


def _results(workdir):
  with open(workdir / "results.json") as f:
    results = json.load(f)
  results.pop("compression", None)
  return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The results of the 2-process run, never stopped."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run_to_the_end([*ARGS, f"--workdir={workdir}"])
  return _results(workdir)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [
    signal.SIGTERM,
    pytest.param(signal.SIGINT, marks=pytest.mark.skipif(
        os.environ.get("KD_JAX_SLOW_TESTS") != "1",
        reason="the same path as SIGTERM (~2 min); KD_JAX_SLOW_TESTS=1 runs it"))],
    ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_both_and_the_rerun_matches(tmp_path, uninterrupted, signum):
  stopped = tmp_path / "stopped"
  run = _Processes([*ARGS, f"--workdir={stopped}"])
  try:
    run.wait_for(1, STARTED)
    run.processes[1].send_signal(signum)
    returncodes = run.wait(timeout=STOP_TIMEOUT)
    assert returncodes == [130, 130], (f"not both stopped within {STOP_TIMEOUT}s after "
                                       f"{signal.Signals(signum).name} to process 1: "
                                       f"{returncodes}\n" + run.outputs())
  finally:
    run.kill()
  stops = [line for i in (0, 1) for line in run.lines[i] if "stopped at step" in line]
  assert len(stops) == 2 and stops[0] == stops[1], run.outputs()  # the same step in both
  step = int(stops[0].split("stopped at step ")[1].split("/")[0])
  assert 0 < step < STUDENT_STEPS
  assert (stopped / "student" / str(step)).is_dir()
  assert not (stopped / "results.json").exists()

  _run_to_the_end([*ARGS, f"--workdir={stopped}"])
  assert _results(stopped) == uninterrupted
