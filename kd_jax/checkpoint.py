"""Orbax checkpoints: a CheckpointManager per training phase, plain variable checkpoints per teacher.

Faults these functions handle, so that any interrupted or damaged workdir resumes:
- Saves are synchronous and checked: a failed write (full disk, lost permissions) raises
  CheckpointWriteError at once, instead of training on without checkpoints; the tracebacks Orbax's
  writer threads print and log on the way are dropped (the error is reported in one line).
- An unreadable newest checkpoint (truncated file, missing metadata, deleted item) is moved aside to
  `<step>.unreadable` with a one-line warning and the previous step is restored; with none left the
  run stops with one line.
- Teacher variables are written to `<path>.partial` and renamed to `<path>` when complete, so `<path>`
  existing means a whole checkpoint, and saving a member that exists keeps it (an interrupted run that
  saved some members of a group saves the rest on resume).
"""

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from kd_jax.errors import KdJaxError

UNREADABLE_SUFFIX = ".unreadable"
_SETTLE_SECONDS = 0.5
PARTIAL_SUFFIX = ".partial"
# Item names of a streamed run's checkpoint (others hold the state alone, as Orbax's 'default' item).
_STATE_ITEM, _DATA_ITEM = "state", "data"


class CheckpointWriteError(KdJaxError):
  """A checkpoint could not be written: training stops rather than run on without one."""


class UnreadableCheckpoint(KdJaxError):
  """A checkpoint exists but cannot be restored."""

  def __init__(self, message: str, path: str = ""):
    super().__init__(message)
    self.path = path


def _reason(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class _AbandonedReadErrors(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' reports, with their tracebacks.

  After a failed restore, Orbax's abandoned read tasks are garbage-collected whenever Python gets to
  them, and asyncio then logs each task's exception, long after the one-line report of the damaged
  checkpoint. Installed only once a restore has failed; kd_jax itself runs no asyncio tasks.
  """

  def filter(self, record):
    return not record.getMessage().startswith("Task exception was never retrieved")


def _silence_abandoned_reads() -> None:
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedReadErrors) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbandonedReadErrors())


class _FailedWriteThreadErrors(logging.Filter):
  """Drops Orbax's 'ERROR:absl: ... _SignalingThread.run() raised an exception' reports, with their
  tracebacks: each of a failing save's writer threads logs the error (a full disk: dozens of lines)
  that the save then raises to us, and that the run reports in one line (CheckpointWriteError)."""

  def filter(self, record):
    return "_SignalingThread.run() raised an exception" not in str(record.msg)


def _silence_failed_write_threads() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _FailedWriteThreadErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_FailedWriteThreadErrors())


@contextlib.contextmanager
def _quiet_failure():
  """Keeps the noise of a failing restore or save off stderr; the failure itself is reported in one
  line.

  Orbax gives up at the first failed read (or write) while others are still in flight, and closes
  its event loop under them: their completions print 'RuntimeError: Event loop is closed' tracebacks
  from background threads. While a restore runs (and for a moment after it fails, so that the
  in-flight local reads finish) stderr goes to a buffer that is dropped; the reads' own exceptions,
  logged when their tasks are collected later, are filtered (`_AbandonedReadErrors`).
  """
  buffer = io.StringIO()
  try:
    with contextlib.redirect_stderr(buffer):
      try:
        yield
      except Exception:
        _silence_abandoned_reads()
        time.sleep(_SETTLE_SECONDS)
        raise
  finally:
    buffer.close()


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  # Synchronous saves: a failed write raises where it happened, and the loop knows that the step it
  # saved is on disk before it goes on (the saves are small next to a training window).
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False))


def _state_and_data(state_args, data_args):
  """A checkpoint's items: the train state alone, or (streamed input) the state under 'default' and
  the grain iterator's position under 'data', written by grain's own Orbax handler (one JSON file
  per process)."""
  if data_args is None:
    return state_args
  return ocp.args.Composite(**{_STATE_ITEM: state_args, _DATA_ITEM: data_args})


def save_state(manager: ocp.CheckpointManager, step: int, state, data_position=None) -> None:
  """Writes `state` as checkpoint `step`; raises CheckpointWriteError if that fails.

  `data_position`, for streamed input, is a grain DatasetIterator whose get_state() is the input
  iterator's position after `step` steps; it is saved in the same checkpoint.
  """
  data_args = None
  if data_position is not None:
    import grain  # pylint: disable=g-import-not-at-top (only streamed runs need grain)
    data_args = grain.checkpoint.CheckpointSave(data_position)
  _silence_failed_write_threads()
  try:
    with _quiet_failure():
      manager.save(step, args=_state_and_data(ocp.args.StandardSave(state), data_args), force=True)
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except (orbax and tensorstore raise many types)
    raise CheckpointWriteError(
        f"could not write checkpoint {manager.directory}/{step} ({_reason(e)}); training stopped. "
        "Free disk space or fix the folder's permissions, then rerun the same command to resume "
        "from the last checkpoint.") from e


def _move_aside(path: str) -> str:
  target = path + UNREADABLE_SUFFIX
  if jax.process_index() == 0:
    if os.path.exists(target):
      shutil.rmtree(target)
    os.rename(path, target)
  return target


def _fields_not_on_disk(path: str, template) -> tuple:
  """The fields of a dataclass `template` that are empty ({}) and absent from the state item at
  `path`: fields a state gained after the checkpoint was written, which restore as that empty value
  (kd_jax.train.TrainState's method fields)."""
  if not dataclasses.is_dataclass(template):
    return ()
  empty = [f.name for f in dataclasses.fields(template)
           if isinstance(getattr(template, f.name), dict) and not getattr(template, f.name)]
  if not empty:
    return ()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # the step-level metadata file it looks for first is optional
  try:
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  finally:
    absl_logger.setLevel(level)
  return tuple(name for name in empty if name not in saved)


def _restore_state(reader, step: int, template, data_iterator):
  """Checkpoint `step`'s state (and streamed input's position, set into `data_iterator`) as
  `template`; empty fields the checkpoint predates keep their empty value."""
  item = _STATE_ITEM if data_iterator is not None else "default"
  absent = _fields_not_on_disk(os.path.join(str(reader.directory), str(step), item), template)
  target = template
  if absent:
    target = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
              if f.name not in absent}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  data_args = None
  if data_iterator is not None:
    import grain  # pylint: disable=g-import-not-at-top
    data_args = grain.checkpoint.CheckpointRestore(data_iterator)
  state = reader.restore(step, args=_state_and_data(ocp.args.StandardRestore(abstract), data_args))
  if data_iterator is not None:
    state = state[_STATE_ITEM]
  return template.replace(**state) if absent else state


def restore_latest(manager: ocp.CheckpointManager, template, data_iterator=None):
  """Returns (state, step) from the newest readable checkpoint, or (template, 0) when there is none.

  Unreadable newer checkpoints are moved aside (one warning line); if no checkpoint is readable this
  raises UnreadableCheckpoint. `data_iterator` (streamed input, a grain DatasetIterator) is set to the
  position saved with the restored state.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return template, 0
  unreadable = []
  for step in steps:
    # A manager that failed to restore one step can fail on the next for that reason alone (it keeps
    # what it inferred about the damaged one), so each attempt uses a fresh, read-only manager.
    reader = ocp.CheckpointManager(
        manager.directory, options=ocp.CheckpointManagerOptions(create=False),
        item_names=None if data_iterator is None else (_STATE_ITEM, _DATA_ITEM))
    try:
      with _quiet_failure():
        state = _restore_state(reader, step, template, data_iterator)
      break
    except Exception as e:  # pylint: disable=broad-except (a damaged checkpoint fails in many ways)
      unreadable.append((step, e))
    finally:
      reader.close()
  else:
    step, error = unreadable[0]
    raise UnreadableCheckpoint(
        f"no readable checkpoint in {manager.directory}: step {step} fails with {_reason(error)}"
        f"{f' and {len(steps) - 1} older one(s) too' if len(steps) > 1 else ''}; delete "
        f"{manager.directory} to restart this phase from scratch.")
  if unreadable:
    for bad_step, _ in unreadable:
      _move_aside(os.path.join(str(manager.directory), str(bad_step)))
    manager.reload()
    newest, error = unreadable[0]
    print(f"warning: checkpoint {manager.directory}/{newest} is unreadable ({_reason(error)}); "
          f"moved aside to *{UNREADABLE_SUFFIX}, resuming from step {step}", file=sys.stderr,
          flush=True)
  return state, step


def save_variables(path: str, variables) -> None:
  """Saves model variables to `path` atomically; an existing `path` (a complete save) is kept."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    return
  partial = path + PARTIAL_SUFFIX
  try:
    if jax.process_index() == 0 and os.path.exists(partial):
      shutil.rmtree(partial)  # left by a save that was killed
    _silence_failed_write_threads()
    with _quiet_failure(), ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(partial, variables)
      checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      os.rename(partial, path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointWriteError(
        f"could not write teacher checkpoint {path} ({_reason(e)}). Free disk space or fix the "
        "folder's permissions, then rerun the same command to resume.") from e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"kd_jax saved {path}")


def _shapes(tree):
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _checked_variables(path: str, template, restored, role: str):
  """`restored` as `template`'s dtypes after checking its shapes against `template` and that every
  value is finite; `role` ('teacher' or 'student') names the config section in the messages."""
  expected, found = _shapes(template), _shapes(restored)
  if expected != found:
    differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    key = differing[0]
    raise KdJaxError(
        f"{role} checkpoint {path} does not fit config.{role}.model: {key} has shape "
        f"{found.get(key, 'missing')} in the checkpoint, {expected.get(key, 'missing')} in the "
        f"model ({len(differing)} mismatches); set config.{role}.model to the architecture it was "
        "trained with.")
  values = jax.tree.map(lambda t, r: np.asarray(r, dtype=np.asarray(t).dtype), template, restored)
  if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(values)):
    plural = "s" if role == "teacher" else ""
    raise KdJaxError(f"{role} checkpoint {path} holds non-finite weights (a diverged training); "
                     f"retrain the {role}{plural} with a lower learning rate.")
  return values


def _restore_raw(path: str, what: str):
  """The tree saved at `path`, restored without a template; UnreadableCheckpoint if that fails."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    with _quiet_failure():
      return checkpointer.restore(path)
  except Exception as e:  # pylint: disable=broad-except (a damaged checkpoint fails in many ways)
    raise UnreadableCheckpoint(f"{what} {path} is unreadable ({_reason(e)}).", path=path) from e
  finally:
    checkpointer.close()


def load_variables(path: str, template):
  """Restores model variables saved by `save_variables`, checked against `template`'s shapes.

  Raises UnreadableCheckpoint for a damaged checkpoint, KdJaxError for a missing or misfitting one.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise KdJaxError(f"teacher checkpoint {path} does not exist; point config.teacher.load_from "
                     "at the workdir of a finished teacher run.")
  return _checked_variables(path, template, _restore_raw(path, "teacher checkpoint"), "teacher")


def load_final_variables(directory: str, template, role: str = "student") -> tuple:
  """(variables, step): the params (and batch_stats, if `template` has them) of the newest
  checkpoint of a phase's CheckpointManager `directory` (the state of the phase's last step once it finished),
  checked against `template` (model variables); its optimizer state is read but dropped.

  A streamed run's checkpoints hold the state as their 'state' item, the others as 'default'.
  Raises UnreadableCheckpoint for a damaged newest checkpoint (an older one is not the trained
  model), KdJaxError for a missing or misfitting one.
  """
  directory = os.path.abspath(directory)
  steps = sorted((int(name) for name in (os.listdir(directory) if os.path.isdir(directory) else ())
                  if name.isdigit()), reverse=True)
  if not steps:
    raise KdJaxError(f"{directory} holds no {role} checkpoint; train the run to the end first "
                     "(rerun its run.py command).")
  step_dir = os.path.join(directory, str(steps[0]))
  item = next((os.path.join(step_dir, name) for name in (_STATE_ITEM, "default")
               if os.path.isdir(os.path.join(step_dir, name))), step_dir)
  state = _restore_raw(item, f"{role} checkpoint")
  if not isinstance(state, dict) or "params" not in state:
    raise UnreadableCheckpoint(f"{role} checkpoint {item} holds no model parameters.",
                               path=step_dir)
  restored = {key: state[key] for key in template if state.get(key)}
  return _checked_variables(item, template, restored, role), steps[0]


def move_aside(path: str) -> str:
  """Renames a damaged checkpoint folder to `<path>.unreadable` (kept for inspection); returns it."""
  return _move_aside(os.path.abspath(path))
