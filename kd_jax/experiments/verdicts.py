"""The verdict rule of the reproduction suite, and the data a claim is made of.

A suite's claims (its claims.py, e.g. configs/paper/small/claims.py) are Claims of Checks over
Cells: a Cell is one metric of one (experiment, variant) over the seeds, read from the suite's
workdir by Suite.cell; a Check compares a per-seed statistic of cells with a threshold
(VERDICT_RULE, printed in the claims report: one-sided t tests, and two of them for equivalence). A run that has not finished, or whose metric is not
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

LEVEL = 0.95  # confidence of every one-sided test

HOLDS, CONTRADICTS, INCONCLUSIVE, INCOMPLETE = "holds", "contradicts", "inconclusive", "incomplete"
AT_THIS_SCALE = "inconclusive at this scale"

VERDICT_RULE = (
    "Each claim is split into checks. A check computes one statistic per seed (a metric, or a "
    "difference between two variants of the same seed, which share their teachers). With n >= 2 "
    "seeds, mean m, sample standard deviation s, SE = s / sqrt(n) and t = (m - threshold) / SE, "
    f"each test is a one-sided Student's t test at {100 * LEVEL:g} % with n - 1 degrees of freedom "
    f"(critical value q = t_{{{LEVEL:g}, n-1}}, 2.92 for n = 3, 1.83 for n = 10). A **greater** "
    "('> threshold') check holds if t > q, contradicts if t < -q (the statistic is significantly "
    "on the other side), and is inconclusive otherwise; a **less** check is its mirror image. An "
    "**equivalence** check ('does not change': |statistic| < margin) is two one-sided tests (TOST): "
    "it holds if both m - margin < 0 and m + margin > 0 are significant (t < -q and t > q "
    "respectively), contradicts if the statistic is significantly outside the margin on either "
    "side, and is inconclusive otherwise. Fewer than 2 seeds are inconclusive. Each check says "
    "whether it **carries** the claim (it states what the paper states) or is informative (shown, "
    "not counted). A claim holds if every check that carries it holds, contradicts only if a check "
    "that carries it contradicts, and is inconclusive otherwise; it is **incomplete** if any run "
    "a carrying check needs is missing, unfinished or has a non-finite metric (diverged): such "
    "runs are listed by name and never averaged. A claim whose experiment is a sized-down "
    "version of its faithful one (it says why) is **inconclusive at this scale** whatever its "
    "checks give, which the table still shows.")


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
      problem = metric_problem(value, metric)
      if problem is None:
        cell.values[seed] = value
    if problem:
      cell.problems[seed] = f"{label}/seed{seed}: {problem}"
  return cell


def metric_problem(value, metric: str):
  """Why a finished run's `metric` cannot enter a cell (absent, or not finite: diverged), or None."""
  if value is None:
    return f"has no {metric}"
  if not math.isfinite(value):
    return f"diverged ({metric} is not finite)"
  return None


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


def status_of(root: str, experiment: str, variant: str, seed: int) -> str:
  """'finished', 'unfinished' (config.json, no results.json) or 'not run' for a suite run."""
  workdir = run_dir(root, experiment, variant, seed)
  if os.path.isfile(os.path.join(workdir, RESULTS_FILE)):
    return "finished"
  return "unfinished" if os.path.isfile(os.path.join(workdir, CONFIG_FILE)) else "not run"


def table_cell(rows, experiment: str, variant: str, metric: str) -> Cell:
  """`metric` of (experiment, variant) from a runs table's rows (suite_table.read_table): every seed
  the table has a row for; a row that is not finished, or lacks the metric, is a named problem."""
  label = f"{experiment}/{variant}"
  cell = Cell(label=label, values={}, problems={})
  mine = [row for row in rows if row["experiment"] == experiment and row["variant"] == variant]
  if not mine:
    cell.problems[-1] = f"{label}: not in the runs table"
  for row in mine:
    seed, value = row["seed"], row["metrics"].get(metric)
    problem = row["status"] if row["status"] != "finished" else metric_problem(value, metric)
    if problem is None:
      cell.values[seed] = value
    if problem:
      cell.problems[seed] = f"{label}/seed{seed}: {problem}"
  return cell


class Suite:
  """The cells of a suite for some seeds: cell(experiment, variant, metric), read once, from the
  suite's workdir `root` or, given `rows` (a runs table's, suite_table.read_table), from those.

  `experiment_seeds` ({experiment: seeds}) gives an experiment that needs more trials than the
  suite's seeds its own (an experiment file's MIN_SEEDS, kd_jax/experiments/suite.py). `requested`
  lists every (experiment, variant, metric) asked for, in order: what a runs table must hold.
  """

  def __init__(self, root: str, seeds, experiment_seeds: dict = None, rows: list = None):
    self.root, self.seeds = root, list(seeds)
    self.experiment_seeds = dict(experiment_seeds or {})
    self.rows = rows
    self.requested = []
    self._cache = {}

  def seeds_of(self, experiment: str) -> list:
    return list(self.experiment_seeds.get(experiment, self.seeds))

  def cell(self, experiment: str, variant: str, metric: str) -> Cell:
    key = (experiment, variant, metric)
    if key not in self._cache:
      self.requested.append(key)
      if self.rows is not None:
        self._cache[key] = table_cell(self.rows, experiment, variant, metric)
      else:
        self._cache[key] = load_cell(self.root, experiment, variant, self.seeds_of(experiment),
                                     metric)
    return self._cache[key]

  def row(self, experiment: str, variant: str, columns) -> tuple:
    """A row of a claim's table: (variant, {column title: cell}) for columns (title, metric)."""
    return (variant, {title: self.cell(experiment, variant, metric) for title, metric in columns})


# ---------------------------------------------------------------------------------------------------
# The verdict rule

def critical_value(n: int, level: float = LEVEL) -> float:
  """The one-sided Student's t critical value at `level` with n - 1 degrees of freedom."""
  from scipy import stats  # pylint: disable=g-import-not-at-top (scipy only where a verdict is made)
  return float(stats.t.ppf(level, n - 1))


def _t_statistic(values: np.ndarray, threshold: float) -> float:
  """(mean - threshold) / SE; +-inf when every value is equal (SE 0) and off the threshold."""
  difference_ = values.mean() - threshold
  se = values.std(ddof=1) / math.sqrt(values.size)
  if se == 0:
    return math.copysign(math.inf, difference_) if difference_ else 0.0
  return difference_ / se


def _usable(values) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  if values.size < 2 or not np.all(np.isfinite(values)):
    return None
  return values


def decide(values: np.ndarray, threshold: float, direction: int, level: float = LEVEL) -> str:
  """holds / contradicts / inconclusive for 'the statistic is > threshold' (direction +1) or
  '< threshold' (direction -1), from its per-seed values: a one-sided t test (VERDICT_RULE)."""
  if direction not in (1, -1):
    raise ValueError(f"direction must be +1 or -1, not {direction!r}")
  values = _usable(values)
  if values is None:
    return INCONCLUSIVE
  t, q = direction * _t_statistic(values, threshold), critical_value(values.size, level)
  if t > q:
    return HOLDS
  if t < -q:
    return CONTRADICTS
  return INCONCLUSIVE


def decide_equivalent(values: np.ndarray, margin: float, level: float = LEVEL) -> str:
  """holds / contradicts / inconclusive for '|statistic| < margin' (the statistic does not change):
  two one-sided t tests (TOST, VERDICT_RULE). Holds when the mean is significantly below +margin
  and significantly above -margin; contradicts when it is significantly beyond either."""
  if not margin > 0:
    raise ValueError(f"an equivalence margin must be > 0, not {margin!r}")
  values = _usable(values)
  if values is None:
    return INCONCLUSIVE
  q = critical_value(values.size, level)
  upper, lower = _t_statistic(values, margin), _t_statistic(values, -margin)
  if upper < -q and lower > q:
    return HOLDS
  if upper > q or lower < -q:
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
  """One testable statement about `statistic` (per seed): above `threshold` (direction +1, a
  'greater' check), below it (-1, 'less'), or within +-threshold (0, 'equivalence': the threshold is
  the margin)."""
  text: str
  statistic: Cell
  threshold: float
  direction: int
  unit: str = "%"  # '%' (a level), 'pp' (a difference of percentages), '' (a plain number)
  carries: bool = True  # False: informative, left out of the claim's verdict

  @property
  def test(self) -> str:
    """The test that decides the check, as the report names it."""
    if self.direction == 0:
      return "equivalence (TOST)"
    return "one-sided t, greater" if self.direction > 0 else "one-sided t, less"

  @property
  def verdict(self) -> str:
    if self.statistic.problems:
      return INCOMPLETE
    if self.direction == 0:
      return decide_equivalent(self.statistic.array(), self.threshold)
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
  # Why the experiment is smaller than the claim's faithful version ("" if it is not): its checks
  # are computed and shown, but they cannot decide the claim.
  reduced_scale: str = ""

  @property
  def checks_verdict(self) -> str:
    """What the carrying checks combine to (VERDICT_RULE), before any reduced-scale caveat."""
    return combine(check.verdict for check in self.checks if check.carries)

  @property
  def verdict(self) -> str:
    verdict = self.checks_verdict
    return AT_THIS_SCALE if self.reduced_scale and verdict != INCOMPLETE else verdict

  def problems(self) -> list:
    """The runs missing, unfinished or diverged that the checks carrying the claim need."""
    found = set()
    for check in self.checks:
      if check.carries:
        found.update(check.statistic.problems.values())
    return sorted(found)
