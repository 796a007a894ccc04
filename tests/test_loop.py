"""kd_jax/loop.py's fit on a counting step: divergence, checkpoints kept finite, stop signals between
steps, a failed checkpoint write, bounded run-ahead and progress lines."""

import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax import checkpoint, loop, progress, runtime
from kd_jax.errors import DivergedError, Interrupted


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


def test_a_phase_between_log_lines_still_shows_progress(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
  _fit(_counting_step(), tmp_path, total=6, checkpoint_every=1000, log_every=1000)
  out = capsys.readouterr().out
  assert "[test] step 3/6 |" in out and "ETA" in out
