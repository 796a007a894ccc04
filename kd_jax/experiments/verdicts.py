"""The verdict rule of the reproduction suite, and the data a claim is made of.

A suite's claims (its claims.py, e.g. configs/paper/small/claims.py) are Claims of Checks over
Cells: a Cell is one metric of one (experiment, variant) over the seeds, read from the suite's
workdir by Suite.cell; a Check compares a per-seed statistic of cells with a threshold
(VERDICT_RULE, printed in the claims report). A run that has not finished, or whose metric is not
finite, is a named problem of its cell and never a number.
"""

import dataclasses
import math
import os
from typing import Callable

import numpy as np

from kd_jax.experiments.runs import result_value
from kd_jax.experiments.stats import mean_std_text
from kd_jax.workdir import CONFIG_FILE, RESULTS_FILE, read_results

Z = 2.0  # standard errors between the mean and the threshold

HOLDS, CONTRADICTS, INCONCLUSIVE, INCOMPLETE = "holds", "contradicts", "inconclusive", "incomplete"

VERDICT_RULE = (
    "Each claim is split into checks. A check computes one statistic per seed (a metric, or a "
    "difference between two variants of the same seed, which share their teachers) and compares it "
    f"with a threshold in the direction the paper claims. With n >= 2 seeds, mean m, sample standard "
    f"deviation s and standard error SE = s / sqrt(n): the check **holds** if m lies beyond the "
    f"threshold in the claimed direction by more than {Z:g} SE, **contradicts** if it lies on the "
    f"other side by more than {Z:g} SE, and is **inconclusive** otherwise (or with fewer than 2 "
    "seeds). A claim holds if all its checks hold, contradicts if any check contradicts, and is "
    "inconclusive otherwise; it is **incomplete** if any run it needs is missing, unfinished or has "
    "a non-finite metric (diverged): such runs are listed by name and never averaged. Checks marked "
    "'informative' are shown but do not enter the claim's verdict.")


# ---------------------------------------------------------------------------------------------------
# Per-seed values of one metric of one variant

@dataclasses.dataclass
class Cell:
  """One metric of one (experiment, variant) over the seeds: finite values, and named problems."""
  label: str
  values: dict  # seed -> float
  problems: dict  # seed -> '<experiment>/<variant>/seed<k>: not run | unfinished | diverged (...)'

  def array(self) -> np.ndarray:
    return np.array([self.values[s] for s in sorted(self.values)], dtype=np.float64)


def run_dir(root: str, experiment: str, variant: str, seed: int) -> str:
  """Where the suite keeps a run: <root>/<experiment>/<variant>/seed<k> (as the sweep plans it)."""
  return os.path.join(root, experiment, variant, f"seed{seed}")


def load_cell(root: str, experiment: str, variant: str, seeds, metric: str) -> Cell:
  """`metric` (a results.json name as runs.result_value reads it) of each seed's run."""
  label = f"{experiment}/{variant}"
  cell = Cell(label=label, values={}, problems={})
  for seed in seeds:
    workdir = run_dir(root, experiment, variant, seed)
    results_path = os.path.join(workdir, RESULTS_FILE)
    problem = None
    results = read_results(workdir)
    if results is None and os.path.isfile(results_path):
      problem = f"{RESULTS_FILE} is damaged (rerun to evaluate it again)"
    elif results is None:
      started = os.path.isfile(os.path.join(workdir, CONFIG_FILE))
      problem = "unfinished" if started else "not run"
    else:
      value = result_value(results, metric)
      if value is None:
        problem = f"has no {metric}"
      elif not math.isfinite(value):
        problem = f"diverged ({metric} is not finite)"
      else:
        cell.values[seed] = value
    if problem:
      cell.problems[seed] = f"{label}/seed{seed}: {problem}"
  return cell


def combine_cells(fn: Callable, *cells: Cell) -> Cell:
  """fn(values of each cell) per seed where every cell has a value; problems of any cell are kept,
  named by their run."""
  seeds = set.intersection(*(set(c.values) for c in cells)) if cells else set()
  values = {s: float(fn(*(c.values[s] for c in cells))) for s in seeds}
  problems = {}
  for cell in cells:
    for seed, problem in cell.problems.items():
      problems.setdefault(seed, []).append(problem)
  return Cell(label=" vs ".join(c.label for c in cells), values=values,
              problems={s: "; ".join(sorted(set(p))) for s, p in problems.items()})


def difference(a: Cell, b: Cell) -> Cell:
  return combine_cells(lambda x, y: x - y, a, b)


def format_values(values: np.ndarray, percent: bool = True) -> str:
  """'mean ± std (n = k)' in percent (or raw), just the mean for one value; never a number for no
  values."""
  if values.size == 0:
    return "no finished run"
  scale, digits = (100.0, 2) if percent else (1.0, 3)
  return f"{mean_std_text(values, scale, digits)} (n = {values.size})"


class Suite:
  """The cells of a suite workdir for some seeds: cell(experiment, variant, metric), read once."""

  def __init__(self, root: str, seeds):
    self.root, self.seeds = root, list(seeds)
    self._cache = {}

  def cell(self, experiment: str, variant: str, metric: str) -> Cell:
    key = (experiment, variant, metric)
    if key not in self._cache:
      self._cache[key] = load_cell(self.root, experiment, variant, self.seeds, metric)
    return self._cache[key]

  def row(self, experiment: str, variant: str, columns) -> tuple:
    """A row of a claim's table: (variant, {column title: cell}) for columns (title, metric)."""
    return (variant, {title: self.cell(experiment, variant, metric) for title, metric in columns})


# ---------------------------------------------------------------------------------------------------
# The verdict rule

def decide(values: np.ndarray, threshold: float, direction: int, z: float = Z) -> str:
  """holds / contradicts / inconclusive for 'the statistic is > threshold' (direction +1) or
  '< threshold' (direction -1), from its per-seed values (see VERDICT_RULE)."""
  if direction not in (1, -1):
    raise ValueError(f"direction must be +1 or -1, not {direction!r}")
  values = np.asarray(values, dtype=np.float64)
  if values.size < 2 or not np.all(np.isfinite(values)):
    return INCONCLUSIVE
  margin = direction * (values.mean() - threshold)
  se = values.std(ddof=1) / math.sqrt(values.size)
  if margin > z * se:
    return HOLDS
  if margin < -z * se:
    return CONTRADICTS
  return INCONCLUSIVE


def combine(verdicts) -> str:
  """A claim's verdict from its checks' (see VERDICT_RULE)."""
  verdicts = list(verdicts)
  if INCOMPLETE in verdicts:
    return INCOMPLETE
  if CONTRADICTS in verdicts:
    return CONTRADICTS
  if verdicts and all(v == HOLDS for v in verdicts):
    return HOLDS
  return INCONCLUSIVE


@dataclasses.dataclass
class Check:
  """One testable statement: `statistic` (per seed) is above (direction +1) or below (-1) threshold."""
  text: str
  statistic: Cell
  threshold: float
  direction: int
  unit: str = "%"  # '%' (a level), 'pp' (a difference of percentages), '' (a plain number)
  binding: bool = True  # False: informative, left out of the claim's verdict

  @property
  def verdict(self) -> str:
    if self.statistic.problems:
      return INCOMPLETE
    return decide(self.statistic.array(), self.threshold, self.direction)

  def ours(self) -> str:
    """mean ± std (n) of the statistic, in the check's unit."""
    percent = self.unit in ("%", "pp")
    text = format_values(self.statistic.array(), percent)
    if self.unit and self.statistic.values:
      numbers, _, count = text.partition(" (")
      text = f"{numbers} {self.unit} ({count}"
    return text


@dataclasses.dataclass
class Claim:
  key: str  # C1 ... C8
  title: str
  paper: str  # the paper's figure and numbers
  checks: list
  table: list  # (row label, {column title: Cell}) for the claim's numbers table
  plot: Callable = None  # (plt, path) -> None: the paper's figure for the claim
  note: str = ""  # how to read our setup against the paper's

  @property
  def verdict(self) -> str:
    return combine(check.verdict for check in self.checks if check.binding)

  def problems(self) -> list:
    found = set()
    for check in self.checks:
      found.update(check.statistic.problems.values())
    return sorted(found)
