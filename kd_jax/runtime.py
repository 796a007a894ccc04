"""Process setup for the entry points, and how a run reacts to Ctrl-C and SIGTERM.

`setup_process()` is the one place that changes the process: run.py and sweep.py call it before
anything else; importing kd_jax modules changes nothing.

Signals. Preemption and `kill` send SIGTERM, a user presses Ctrl-C (SIGINT); both are handled alike.
A jitted train step consumes its donated state, so an exception raised in the middle of the training
loop would lose the state it holds: inside `deferred_signals()` (the training loop, checkpoint saves)
a signal only sets a flag, which the loop checks between steps; it then saves a checkpoint and raises
`Interrupted`. Elsewhere (data loading, evaluation) there is nothing to save, and the signal raises
`Interrupted` at once. A second signal while the first is being handled stops the process at once
with exit status 130: checkpoints are written to a temporary folder and renamed, so the last complete
one survives.

Where Python cannot raise (the signal lands in a garbage-collection callback such as JAX's
`_xla_gc_callback`, or in a `__del__`), it would print the exception as "Exception ignored in ..."
and go on; `install_signal_handlers` drops that report instead, the flag stays set, and the next
check (`raise_if_stopped`: between steps, per evaluation chunk, at phase boundaries) stops the run.

Ending the process. An interrupted run ends through `run_entry_point` with os._exit, after its one
line is printed, its output flushed and its workdir locks released: a signal can stop the main
thread inside a JAX compilation, and Python's finalization with XLA's threads still about then
crashed (a segmentation fault, exit 139 instead of 130). By then there is nothing left to save:
the training loop has saved its checkpoint and every checkpoint manager is closed.
"""

import contextlib
import importlib.metadata
import os
import signal
import sys

from kd_jax import workdir as workdir_lib
from kd_jax.errors import INTERRUPTED_EXIT, Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalState:
  received = None  # the first signal's number, until the run has stopped for it
  deferring = 0  # depth of deferred_signals() blocks
  unraisablehook = staticmethod(sys.__unraisablehook__)  # the one _unraisable passes reports on to


_STATE = _SignalState()


def _signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def _handle(signum, frame):  # pylint: disable=unused-argument
  if _STATE.received is not None:
    # The second signal: the user (or the scheduler) insists. No traceback, no cleanup that could
    # itself be interrupted; completed checkpoints are on disk already.
    os.write(2, f"{_signal_name(signum)} again: stopping now without saving; rerun the same "
                "command to resume from the last checkpoint\n".encode())
    os._exit(INTERRUPTED_EXIT)  # pylint: disable=protected-access
  _STATE.received = signum
  if not _STATE.deferring:
    raise Interrupted(_signal_name(signum))


def _unraisable(report) -> None:
  """sys.unraisablehook: a stop signal raised where Python cannot raise is dropped silently (the
  flag it set stops the run at the next check); anything else goes to the hook it replaced."""
  if isinstance(report.exc_value, (Interrupted, KeyboardInterrupt)):
    return
  _STATE.unraisablehook(report)


def install_signal_handlers() -> None:
  """SIGINT and SIGTERM follow the rules in the module docstring (main thread only)."""
  for signum in STOP_SIGNALS:
    signal.signal(signum, _handle)
  if sys.unraisablehook is not _unraisable:
    _STATE.unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisable


def stop_requested() -> bool:
  return _STATE.received is not None


def raise_if_stopped() -> None:
  """Raises Interrupted if a signal arrived (a loop's check between steps, and at phase boundaries)."""
  if _STATE.received is not None:
    raise Interrupted(_signal_name(_STATE.received))


def reset() -> None:
  """Forgets a handled signal (a process that goes on after an Interrupted, e.g. a test)."""
  _STATE.received = None


def run_entry_point(main, *args) -> None:
  """Calls an entry point's `main(*args)`; an interrupted run then ends with os._exit (module
  docstring), everything else as Python ends it."""
  try:
    main(*args)
  except SystemExit as e:
    if e.code != INTERRUPTED_EXIT:
      raise
  else:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  workdir_lib.release_all()
  os._exit(INTERRUPTED_EXIT)  # pylint: disable=protected-access


@contextlib.contextmanager
def deferred_signals():
  """Inside, a signal only sets the flag (see the module docstring); nesting is allowed."""
  _STATE.deferring += 1
  try:
    yield
  finally:
    _STATE.deferring -= 1


# XLA:CPU flags that made our steps faster, per jaxlib version they were measured with (an XLA flag that
# a later version no longer knows is a fatal error at startup, so other versions get none). 0.10.2:
# XLA's own (Eigen) convolutions instead of YNNPACK's: the PreResNet-20 distillation step ran about 25%
# faster on a 2-core Xeon; see docs/performance.md. GPU and TPU backends ignore xla_cpu_* flags.
CPU_XLA_FLAGS = {
    "0.10.2": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",),
}


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def add_cpu_xla_flags(environ=None) -> tuple:
  """Appends this jaxlib's CPU_XLA_FLAGS to XLA_FLAGS; returns the flags it added.

  A flag whose name XLA_FLAGS already mentions is left as the user set it, and KD_JAX_CPU_XLA_FLAGS=0
  turns the defaults off. XLA reads XLA_FLAGS once, when the first backend starts, so this only acts
  before any JAX computation.
  """
  environ = os.environ if environ is None else environ
  if environ.get("KD_JAX_CPU_XLA_FLAGS", "1") == "0":
    return ()
  current = environ.get("XLA_FLAGS", "")
  added = tuple(flag for flag in CPU_XLA_FLAGS.get(_jaxlib_version(), ())
                if flag.split("=", 1)[0] not in current)
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def default_compilation_cache() -> str:
  return os.environ.get("KD_JAX_COMPILATION_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "kd_jax", "xla"))


def setup_process(*, compilation_cache: bool = True, signals: bool = True) -> None:
  """What the entry points do to the process before the first JAX computation.

  - XLA:CPU flags measured to be faster (`add_cpu_xla_flags`);
  - JAX's persistent compilation cache (reruns, resumes and the runs of a sweep skip recompiling);
    KD_JAX_COMPILATION_CACHE moves it;
  - absl logging at ERROR: tfds and orbax log routine details at WARNING/INFO, our output is print();
  - SIGINT/SIGTERM handlers (`install_signal_handlers`).
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  add_cpu_xla_flags()
  logging.set_verbosity(logging.ERROR)
  if compilation_cache:
    if "jax" in sys.modules:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_compilation_cache_dir", default_compilation_cache())
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    else:
      # Read when JAX is first imported: --help and usage errors come back without waiting for it.
      os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", default_compilation_cache())
      os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  if signals:
    install_signal_handlers()
