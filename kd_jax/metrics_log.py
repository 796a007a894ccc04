"""The run's metric log: metrics.jsonl, and TensorBoard event files beside it.

metrics.jsonl gets one JSON object per logged step or evaluation (process 0 only); a non-finite number
is written as null (valid JSON), and readers skip a last line cut short by a kill (the next run
drops it before it appends). The same numbers go to TensorBoard event files in the workdir, so
`tensorboard --logdir runs/` shows every run.

The event files are written with tensorboardX: a maintained writer of TensorBoard's event format that
needs only NumPy and protobuf (already here through tensorflow-datasets), where clu.metric_writers would
bring in TensorFlow. Without tensorboardX installed the run goes on with metrics.jsonl alone (one note).
Tags are `<phase>/<metric>`, e.g. `student/loss`, `teachers_1-3_of_3/grad_norm`, with the step as the
x-axis; the final evaluation's numbers are `evaluation/<role>_<metric>` at step 0.

The periodic evaluations of a phase (config.evaluation.every_steps: records with "evaluation": true)
are also its history: `evaluation_records` reads them back, one per step, and `best_evaluation`
picks the best test accuracy among them (the figure the CIFAR-100 distillation benchmark's papers
report beside the last epoch's). A run resumed from a checkpoint evaluates the steps after it again
and logs them again: the later record of a step wins, so the history is the uninterrupted run's.
"""

import json
import math
import os
import re
import time

from kd_jax import files
from kd_jax import workdir as workdir_lib


# Far more bytes than a record takes (a few hundred): how far back a partial last line is sought.
_LONGEST_RECORD = 1 << 20
# Record fields that are not curves.
_NOT_SCALARS = ("phase", "step", "time", "members", "event")


def phase_tag(phase: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", phase.replace("/", " of ")).strip("_")


def _import_summary_writer():
  """tensorboardX's SummaryWriter, imported without torch where torch is installed but not imported.

  tensorboardX imports torch, when it can, only to accept torch tensors, which no record holds; that
  import costs about two seconds of every run's start on a CPU. A None entry in sys.modules makes
  `import torch` fail at once for the duration of this import (tensorboardX then takes NumPy arrays
  only), and is removed after it, so a later `import torch` (kd_jax.import_teacher) works as usual.
  """
  import sys  # pylint: disable=g-import-not-at-top
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class EventWriter:
  """Writes numeric fields of metrics.jsonl records as scalars; created on the first record."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = None
    self._missing = False

  def _get(self):
    if self._writer is None and not self._missing:
      try:
        summary_writer = _import_summary_writer()
      except ImportError:
        self._missing = True
        print("note: tensorboardX is not installed, so no TensorBoard events are written "
              "(pip install -r requirements.txt); metrics.jsonl has every number", flush=True)
        return None
      self._writer = summary_writer(logdir=self.logdir, flush_secs=30)
    return self._writer

  def write(self, record: dict) -> None:
    if "phase" not in record:
      return
    scalars = {key: value for key, value in record.items()
               if key not in _NOT_SCALARS and isinstance(value, (int, float))
               and not isinstance(value, bool)}
    if not scalars:
      return
    writer = self._get()
    if writer is None:
      return
    tag, step = phase_tag(record["phase"]), int(record.get("step", 0))
    for key, value in scalars.items():
      writer.add_scalar(f"{tag}/{key}", float(value), global_step=step)
    writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _finite_or_none(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(v) for v in value]
  return value


class MetricsLog:
  """Appends one JSON object per logged step or evaluation to metrics.jsonl (process 0 only).

  A non-finite number is written as null (valid JSON); readers skip a last line cut short by a kill.
  The same numbers go to TensorBoard event files in the workdir (EventWriter).
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, workdir_lib.METRICS_FILE)
    self.events = EventWriter(workdir) if tensorboard else None
    self._checked = False  # whether a last line cut short by a kill has been dropped

  def _drop_partial_line(self) -> None:
    """Cuts the file back to its last newline: a record cut short by a kill would otherwise run into
    the next one appended, an invalid line in the middle of the file."""
    try:
      with open(self.path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
          return
        f.seek(size - 1)
        if f.read(1) == b"\n":
          return
        start = max(size - _LONGEST_RECORD, 0)
        f.seek(start)
        cut = f.read().rfind(b"\n")
        if cut < 0 and start > 0:
          f.write(b"\n")  # no line start in reach: end the partial line instead
        else:
          f.truncate(start + cut + 1)
    except FileNotFoundError:
      pass

  def write(self, record: dict) -> None:
    if not workdir_lib.is_main_process():
      return
    if not self._checked:
      self._drop_partial_line()
      self._checked = True
    record = _finite_or_none({"time": round(time.time(), 3), **record})
    line = json.dumps(record, allow_nan=False)
    with open(self.path, "a") as f:
      f.write(line + "\n")
    if self.events is not None:
      self.events.write(record)


def evaluation_records(path: str, phase: str) -> list:
  """The periodic evaluation records of `phase` in the metrics file at `path` (none if it does not
  exist), one per step in step order; where a resumed run logged a step twice the later record wins.
  """
  if not os.path.isfile(path):
    return []
  by_step = {}
  for record in files.read_jsonl(path):
    if record.get("evaluation") is True and record.get("phase") == phase and "step" in record:
      by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_evaluation(records, steps_per_epoch: int) -> dict:
  """The best test accuracy over evaluation `records` (dicts with 'step', 'test_accuracy' and
  'test_agreement', in step order) and where it was reached: {'best_test_accuracy',
  'best_test_accuracy_step', 'best_test_accuracy_epoch' (step / steps_per_epoch),
  'best_test_agreement' (at that step), 'test_evaluations' (how many records the best is over),
  'last_test_accuracy' and 'last_epoch' (the last record's)}.

  Ties go to the earliest step, as `if acc > best_acc` in the references' training loops; records
  without a finite accuracy (a null: non-finite when logged) do not count. {} without any.
  """
  scored = [r for r in records if _finite(r.get("test_accuracy"))]
  if not scored:
    return {}
  best = max(scored, key=lambda r: r["test_accuracy"])  # the first of equal maxima
  return {"best_test_accuracy": best["test_accuracy"],
          "best_test_accuracy_step": int(best["step"]),
          "best_test_accuracy_epoch": round(best["step"] / steps_per_epoch, 4),
          "best_test_agreement": best.get("test_agreement"),
          "test_evaluations": len(scored),
          "last_test_accuracy": scored[-1]["test_accuracy"],
          "last_epoch": round(scored[-1]["step"] / steps_per_epoch, 4)}
