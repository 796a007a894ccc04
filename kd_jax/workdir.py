"""What a run keeps in its workdir: config.json (its identity), checkpoints, results.json (metrics.jsonl:
kd_jax/metrics_log.py).

A workdir belongs to one config: rerunning the same config resumes it, a different config is refused
before anything is written, and a folder kd_jax did not create is never written into. One process
at a time works in a workdir: `prepare` takes a lock (the `.lock` file, naming the process) that is
released when the process ends; a lock left by a process that no longer runs is taken over.

Files are written whole through a temporary file and a rename (kd_jax/files.py). A run that diverged
leaves diverged.json (phase, step, message) instead of results.json; report and sweep flag it.
"""

import atexit
import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time

import ml_collections

from kd_jax import config as config_lib
from kd_jax import files
from kd_jax.errors import KdJaxError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
DIVERGED_FILE = "diverged.json"
LOCK_FILE = ".lock"
# Keys that change how a run reports or saves progress, or whether and where it downloads data, not
# what it computes: they may differ on resume. (evaluation.every_steps is not one of them: the
# student's best test accuracy in results.json is the best over those evaluations.)
OPERATIONAL_KEYS = (
    "log_every_steps", "checkpoint_every_steps", "eval_batch_size", "profile_steps",
    "data.download", "data.download_dir", "distill.ood_data.download",
    "distill.ood_data.download_dir", "evaluation.compression")


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """{"distill": {"temperature": 4.0}} -> {"distill.temperature": 4.0}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def process_index() -> int:
  # Imported here so that reading workdirs (kd_jax.report, sweep planning) does not pay for JAX.
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def is_main_process() -> bool:
  return process_index() == 0


def _sync(name: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def config_differences(saved: dict, current: dict) -> list:
  """(key, saved value, current value) for each key whose value differs, operational keys aside.

  A key the saved config lacks counts as the default it has today: a field added to kd_jax after the
  run started (whose default keeps the old behaviour) does not make the run a different config.
  """
  saved, current = flatten_config(saved), flatten_config(current)
  defaults = flatten_config(config_dict(config_lib.default_config()))
  keys = sorted((saved.keys() | current.keys()) - set(OPERATIONAL_KEYS))
  differences = []
  for key in keys:
    old, new = saved.get(key, defaults.get(key, "<absent>")), current.get(key, "<absent>")
    if old != new:
      differences.append((key, saved.get(key, "<absent>"), new))
  return differences


def read_json(path: str, what: str):
  """A JSON file kd_jax wrote; a damaged one (cut short by an older version's crash) is a KdJaxError."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise KdJaxError(f"{path} ({what}) is damaged ({type(e).__name__}: {e}); delete the folder "
                     "that holds it to start that run over.") from e


def _ours(name: str) -> bool:
  """Files kd_jax may leave in a workdir before config.json exists (a lock, a temporary file)."""
  return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def check(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Raises KdJaxError if `config` may not run in `workdir`; returns True if it resumes a run there.

  Reads only: nothing is created or written.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise KdJaxError(f"workdir {workdir} is a file, not a folder; choose another --workdir.")
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.isfile(config_path):
    differences = config_differences(read_json(config_path, "the run's config"), config_dict(config))
    if differences:
      key, old, new = differences[0]
      raise KdJaxError(
          f"workdir {workdir} holds a run of a different config ({key}: {old!r} there, {new!r} now; "
          f"{len(differences)} keys differ); use a new --workdir, or the same config to resume it.")
    return True
  if os.path.isdir(workdir) and not all(_ours(name) for name in os.listdir(workdir)):
    raise KdJaxError(f"workdir {workdir} is not empty and holds no kd_jax run (no {CONFIG_FILE}); "
                     "choose a new or empty --workdir.")
  return False


def prepare(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Checks, creates and locks `workdir` for `config`, writes config.json; True if it resumes.

  Multi-process runs: every process checks before process 0 writes; only process 0 takes the lock
  (the processes of one run share the workdir), and tells the others whether it got it.
  """
  resuming = check(workdir, config)
  _sync("kd_jax workdir checked")
  error = None
  if is_main_process():
    created = not os.path.exists(workdir)
    try:
      os.makedirs(workdir, exist_ok=True)
      lock(workdir)
      if not resuming:
        files.write_json(os.path.join(workdir, CONFIG_FILE), config_dict(config), sort_keys=True)
    except KdJaxError as e:
      error = e
    except OSError as e:
      error = KdJaxError(f"cannot write to workdir {workdir} ({e.strerror or e}); free disk space "
                         "or choose a --workdir in a folder you can write to.")
    if error is not None and not resuming:
      _undo_prepare(workdir, created)
  _raise_everywhere(error)
  return resuming


def _undo_prepare(workdir: str, created: bool) -> None:
  """After a failed `prepare` of a new run: gives the lock back and removes the folder if this
  process created it (it holds nothing else then), so that no empty workdir is left behind."""
  if os.path.abspath(workdir) in _HELD:
    release(workdir)
  if created:
    with contextlib.suppress(OSError):
      for name in os.listdir(workdir):
        if _ours(name):
          os.remove(os.path.join(workdir, name))
      os.rmdir(workdir)


def _raise_everywhere(error) -> None:
  """Raises `error` on process 0 and a KdJaxError on the others (which have to stop as well)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if failed and error is None:
      raise KdJaxError("process 0 could not prepare the workdir; see its error.")
  if error is not None:
    raise error


# ---------------------------------------------------------------------------------------------------
# Lock

_HELD = set()  # workdirs this process has locked


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


def lock(workdir: str) -> None:
  """Takes `workdir`'s lock for this process (kept until it exits); raises KdJaxError if another
  running process holds it. A lock of a process that no longer runs on this host is taken over."""
  workdir = os.path.abspath(workdir)
  if workdir in _HELD:
    return
  path = os.path.join(workdir, LOCK_FILE)
  owner = {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}
  for _ in range(3):
    handle, temporary = tempfile.mkstemp(dir=workdir, prefix=f"{LOCK_FILE}.", suffix=".tmp")
    try:
      with os.fdopen(handle, "w") as f:
        json.dump(owner, f)
      # link() fails if the lock exists, so two processes cannot both take it, and the lock file is
      # complete the moment it appears.
      os.link(temporary, path)
      break
    except FileExistsError:
      pass
    finally:
      os.remove(temporary)
    try:
      with open(path) as f:
        holder = json.load(f)
    except FileNotFoundError:
      continue  # released meanwhile
    except ValueError:
      holder = {}
    if holder.get("pid") == os.getpid() and holder.get("host") == owner["host"]:
      break
    pid, host = holder.get("pid"), holder.get("host")
    if host == owner["host"] and isinstance(pid, int) and not _alive(pid):
      print(f"warning: workdir {workdir} was locked by process {pid}, which no longer runs; taking "
            "the lock over", file=sys.stderr, flush=True)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    raise KdJaxError(
        f"workdir {workdir} is in use by process {pid} on {host}; wait for it to finish or stop it "
        f"(if no such process runs, delete {path}).")
  else:
    raise KdJaxError(f"could not lock workdir {workdir}; another process keeps taking it.")
  _HELD.add(workdir)
  atexit.register(_release, workdir)


def _release(workdir: str) -> None:
  path = os.path.join(workdir, LOCK_FILE)
  try:
    with open(path) as f:
      if json.load(f).get("pid") == os.getpid():
        os.remove(path)
  except (OSError, ValueError):
    pass
  _HELD.discard(workdir)


def release(workdir: str) -> None:
  """Gives `workdir`'s lock back before the process ends (a finished or failed run)."""
  _release(os.path.abspath(workdir))


def release_all() -> None:
  """Gives back every lock this process holds (a process about to end without running atexit)."""
  for workdir in list(_HELD):
    _release(workdir)


# ---------------------------------------------------------------------------------------------------
# Writing

def non_finite_keys(tree, prefix: str = "") -> list:
  """Dotted keys of the non-finite numbers in a results tree."""
  if isinstance(tree, dict):
    return [k for key, value in tree.items() for k in non_finite_keys(value, f"{prefix}{key}.")]
  if isinstance(tree, (list, tuple)):
    return [k for i, value in enumerate(tree) for k in non_finite_keys(value, f"{prefix}{i}.")]
  if isinstance(tree, float) and not math.isfinite(tree):
    return [prefix.rstrip(".")]
  return []


def write_results(workdir: str, results: dict) -> None:
  """Writes results.json; results with a non-finite number are refused (DivergedError): NaN is not
  valid JSON, and a NaN metric must not pass for a result."""
  from kd_jax.errors import DivergedError  # pylint: disable=g-import-not-at-top
  bad = non_finite_keys(results)
  if bad:
    error = DivergedError(f"the evaluation gave non-finite values ({', '.join(bad[:3])}"
                          f"{', ...' if len(bad) > 3 else ''}); {RESULTS_FILE} not written.")
    write_diverged(workdir, str(error))
    raise error
  if is_main_process():
    files.write_json(os.path.join(workdir, RESULTS_FILE), results)
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, DIVERGED_FILE))  # an earlier attempt's


def read_results(workdir: str):
  """The results of a finished run (results.json), or None: a run is finished only if its results
  parse, so one whose results.json is missing or damaged is evaluated again when it is rerun."""
  try:
    with open(os.path.join(workdir, RESULTS_FILE), encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return results if isinstance(results, dict) else None


def write_diverged(workdir: str, message: str) -> None:
  """Marks the workdir's run as diverged (report and sweep read this)."""
  if is_main_process() and os.path.isdir(workdir):
    files.write_json(os.path.join(workdir, DIVERGED_FILE),
                     {"time": round(time.time(), 3), "error": message})


def read_diverged(workdir: str):
  """The message of a diverged run, or None."""
  path = os.path.join(workdir, DIVERGED_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f).get("error", "diverged")
  except (OSError, ValueError):
    return "diverged"
