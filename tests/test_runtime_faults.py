"""kd_jax/runtime.py under faults: stop signals that land where Python cannot raise."""

import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from kd_jax import evaluation, parallel, runtime
from kd_jax.errors import Interrupted

# A signal that lands in a garbage-collection callback (JAX's _xla_gc_callback during the final
# evaluation): Python reports the exception raised there as "Exception ignored in ..." and goes on.
_SIGNAL_IN_GC_CALLBACK = textwrap.dedent("""
    import gc, os, signal
    from kd_jax import runtime
    from kd_jax.experiments import cli

    def callback(phase, info):
      if phase == "start":
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10))  # the handler runs here, inside the callback

    runtime.install_signal_handlers()
    gc.callbacks.append(callback)
    with cli.exit_statuses():
      gc.collect()
      gc.callbacks.remove(callback)
      runtime.raise_if_stopped()
      print("not stopped")
""")


def test_a_signal_inside_a_gc_callback_is_one_line_and_exit_130():
  result = subprocess.run([sys.executable, "-c", _SIGNAL_IN_GC_CALLBACK], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 130, result.stdout + result.stderr
  assert result.stderr.splitlines() == ["interrupted; rerun the same command to resume"], (
      result.stderr)
  assert "not stopped" not in result.stdout


@pytest.fixture
def handlers():
  saved = [signal.getsignal(s) for s in runtime.STOP_SIGNALS]
  hook = sys.unraisablehook
  runtime.install_signal_handlers()
  yield
  runtime.reset()
  sys.unraisablehook = hook
  for signum, handler in zip(runtime.STOP_SIGNALS, saved):
    signal.signal(signum, handler)


def test_an_evaluation_pass_stops_at_a_pending_signal(handlers):
  mesh = parallel.make_mesh()
  predict = evaluation.make_predict_fn(lambda variables, x: x.reshape(x.shape[0], -1) @ variables,
                                       batch_size=2, mesh=mesh)
  images = np.zeros((6, 2, 2, 1), np.float32)
  args = (jnp.ones((4, 3)), images, np.zeros(1, np.float32), np.ones(1, np.float32))
  assert predict(*args).shape == (6, 3)
  with runtime.deferred_signals():  # the flag is set, nothing raised (as after a dropped report)
    os.kill(os.getpid(), signal.SIGINT)
  with pytest.raises(Interrupted):
    predict(*args)
