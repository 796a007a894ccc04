"""The compact runs table of a reproduction suite: one row per run with the figures its claims read,
and the commit the table was written from, so that every verdict can be recomputed without the runs.

  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --report-only
      (writes <workdir>/report/runs.csv from the workdir tree, with the verdicts)
  python -m kd_jax.reproduce --suite=configs/paper/small --table=docs/reproduction/runs.csv \
      --workdir=/tmp/from_table --report-only
      (recomputes every verdict from the table alone)

Columns: commit, experiment, variant, seed, status ('finished', 'unfinished', 'not run'), then one
column per metric the claims read (a results.json name as runs.result_value reads it, e.g.
student.test_agreement), written with repr so that the floats read back bit-identical; empty where a
run lacks the metric, 'nan' where it is not finite.
"""

import csv
import math
import os
import subprocess

from kd_jax import files
from kd_jax.errors import KdJaxError
from kd_jax.experiments import verdicts
from kd_jax.experiments.runs import result_value
from kd_jax.workdir import RESULTS_FILE, read_json

FIXED_COLUMNS = ("commit", "experiment", "variant", "seed", "status")


def checkout_commit(folder: str) -> str:
  """The git commit of the checkout holding `folder` ('+dirty' when tracked files differ from it),
  or 'unknown' outside a git checkout."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("+dirty" if dirty else "")


def table_rows(root: str, suite: verdicts.Suite) -> list:
  """The rows of the table of `suite`'s workdir `root`: one per (experiment, variant, seed) the
  suite's claims asked for (suite.requested), with every requested metric of that run."""
  metrics, runs = {}, {}
  for experiment, variant, metric in suite.requested:
    metrics.setdefault(metric, None)
    runs.setdefault((experiment, variant), {})[metric] = None
  rows = []
  for (experiment, variant), wanted in runs.items():
    for seed in suite.seeds_of(experiment):
      status = verdicts.status_of(root, experiment, variant, seed)
      values = {}
      if status == "finished":
        results = read_json(os.path.join(verdicts.run_dir(root, experiment, variant, seed),
                                         RESULTS_FILE), "the run's results")
        values = {metric: result_value(results, metric) for metric in wanted}
      rows.append({"experiment": experiment, "variant": variant, "seed": seed, "status": status,
                   "metrics": {k: v for k, v in values.items() if v is not None}})
  return rows


def write_table(path: str, rows, commit: str) -> None:
  """Writes `rows` (table_rows's) with `commit` in every row."""
  metrics = sorted({metric for row in rows for metric in row["metrics"]})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  lines = []

  class _Lines:
    def write(self, text):
      lines.append(text)

  writer = csv.writer(_Lines(), lineterminator="\n")
  writer.writerow(FIXED_COLUMNS + tuple(metrics))
  for row in rows:
    writer.writerow([commit, row["experiment"], row["variant"], row["seed"], row["status"]] +
                    [repr(row["metrics"][m]) if m in row["metrics"] else "" for m in metrics])
  files.write_text(path, "".join(lines))


def read_table(path: str) -> tuple:
  """(rows, commits) of a table write_table wrote; a malformed one is a KdJaxError naming the line."""
  if not os.path.isfile(path):
    raise KdJaxError(f"--table={path} does not exist; write one with --report-only over a suite "
                     "workdir (<workdir>/report/runs.csv).")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(header[:len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
      raise KdJaxError(f"{path} is not a suite runs table: its header must start with "
                       f"{','.join(FIXED_COLUMNS)}.")
    metrics = header[len(FIXED_COLUMNS):]
    rows, commits = [], set()
    for number, fields in enumerate(reader, start=2):
      if len(fields) != len(header):
        raise KdJaxError(f"{path} line {number}: {len(fields)} fields where the header has "
                         f"{len(header)}.")
      commit, experiment, variant, seed, status = fields[:len(FIXED_COLUMNS)]
      try:
        values = {m: float(v) for m, v in zip(metrics, fields[len(FIXED_COLUMNS):]) if v != ""}
        seed = int(seed)
      except ValueError as e:
        raise KdJaxError(f"{path} line {number}: {e}.") from e
      commits.add(commit)
      rows.append({"experiment": experiment, "variant": variant, "seed": seed, "status": status,
                   "metrics": {m: (v if math.isfinite(v) else math.nan) for m, v in values.items()}})
  return rows, sorted(commits)
