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

Several processes (JAX's multi-process runtime, `run.py --distributed`). A signal often reaches one
process only (a `kill`, one host preempted), and a process that stopped on its own would leave the
others waiting at their next collective for ever. So there a signal never raises at once (every
block defers it), and the processes decide together: at points that every process reaches in the
same order, a vote (`stop_vote`, a maximum of every process's flag over all devices) says whether a
signal reached any of them, and all stop there if one did. The training loop starts a vote every
few steps without waiting for it (kd_jax/loop.py), `raise_if_stopped` votes and waits.
"""

import contextlib
import functools
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
  if not _STATE.deferring and not _distributed():
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


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
  """jax.distributed.initialize (run.py --distributed) with JAX's preemption service off.

  That service's notifier catches SIGTERM itself, in place of our handler, and then only answers
  `multihost_utils.reached_preemption_sync_point`: the signal would stop nothing, and SIGINT is not
  covered at all. The processes vote on stopping instead (see the module docstring). Our handlers,
  if installed, are installed again afterwards, should initialize have taken a signal anyway (a JAX
  without that option, say).
  """
  import jax  # pylint: disable=g-import-not-at-top
  ours = signal.getsignal(signal.SIGTERM) is _handle
  try:
    jax.config.update("jax_enable_preemption_service", False)
  except AttributeError:  # A JAX that no longer has the option: the handlers are reinstalled below.
    pass
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  if ours:
    install_signal_handlers()


def stop_requested() -> bool:
  """Whether a signal reached this process (in a multi-process run: this one, not any)."""
  return _STATE.received is not None


def raise_if_stopped() -> None:
  """Raises Interrupted if a signal arrived (at phase boundaries). In a multi-process run every
  process must call it at the same point: all raise if a signal reached any of them."""
  if multiprocess():
    if stop_agreed(stop_vote()):
      raise Interrupted(_signal_name(_STATE.received) if _STATE.received is not None
                        else "a signal to another process")
  elif _STATE.received is not None:
    raise Interrupted(_signal_name(_STATE.received))


def _distributed() -> bool:
  """Whether jax.distributed is initialized; safe in a signal handler (it starts nothing)."""
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


def multiprocess() -> bool:
  """Whether this process is one of several of JAX's multi-process runtime."""
  if not _distributed():
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() > 1


@functools.lru_cache(maxsize=None)
def _vote_program():
  """(the sharding of one flag per device, the jitted maximum of them, replicated everywhere)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  maximum = jax.jit(lambda flags: flags.max(), out_shardings=replicated)
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices")), maximum


def stop_vote():
  """Starts a vote of all processes on stopping; returns its outcome on the devices, not fetched.

  Each process contributes its flag (`stop_requested`) on each of its devices, and one compiled
  maximum over all devices of all processes (a collective: every process must start the same votes
  in the same order) gives each process the same value: 1 where a signal reached any of them.
  Dispatched like a step, it costs the host no wait; `stop_agreed` reads it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sharding, maximum = _vote_program()
  flags = np.full((jax.local_device_count(),), int(stop_requested()), np.int32)
  return maximum(jax.make_array_from_process_local_data(sharding, flags, (jax.device_count(),)))


def stop_agreed(vote) -> bool:
  """The outcome of a `stop_vote` (waits for it): whether a signal reached any process."""
  import jax  # pylint: disable=g-import-not-at-top
  return bool(jax.device_get(vote))


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
