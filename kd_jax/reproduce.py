"""The reproduction suite: every experiment of a suite folder for several seeds in one resumable
command, then a verdict per claim of Stanton et al. (2021) computed from the runs.

  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --seeds=0,1,2
  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --dry-run
  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --report-only

Every `*.py` of the suite folder not starting with '_' is an experiment file (VARIANTS and
get_config(variant)); its runs go to <workdir>/<experiment>/<variant>/seed<k>. All experiments are
planned together, so runs of any experiment that would train the same teachers share them
(kd_jax/sweep.py). Rerunning the command skips finished runs and resumes an interrupted one where it
stopped. Then it writes, per experiment, the usual report (<workdir>/<experiment>/report/) and, over
the whole suite, <workdir>/report/results.md with one row per claim and one PNG per claim.

The verdict rule (VERDICT_RULE below, printed in the report) compares per-seed statistics with a
threshold, two standard errors apart. A run that has not finished or whose metric is not finite is
named in the report and never enters a number.
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import time
from typing import Callable

import numpy as np

from kd_jax.errors import KdJaxError

REPORT_DIR = "report"
TIMES_FILE = "suite_times.jsonl"  # one line per run this command finished: name and seconds
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


def _metric_value(results: dict, metric: str):
  """'student.test_agreement', 'ensemble.test_accuracy' or 'teachers.test_accuracy' (the mean over
  members) from a results.json dict; None where absent."""
  role, key = metric.split(".", 1)
  if role == "teachers":
    values = [entry.get(key) for entry in results.get("teachers", [])]
    if not values or any(not isinstance(v, (int, float)) for v in values):
      return None
    return float(np.mean(values))
  value = results.get(role, {}).get(key)
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_dir(root: str, experiment: str, variant: str, seed: int) -> str:
  return os.path.join(root, experiment, variant, f"seed{seed}")


def load_cell(root: str, experiment: str, variant: str, seeds, metric: str) -> Cell:
  from kd_jax.workdir import CONFIG_FILE, RESULTS_FILE
  label = f"{experiment}/{variant}"
  cell = Cell(label=label, values={}, problems={})
  for seed in seeds:
    workdir = run_dir(root, experiment, variant, seed)
    results_path = os.path.join(workdir, RESULTS_FILE)
    problem = None
    if not os.path.isfile(results_path):
      started = os.path.isfile(os.path.join(workdir, CONFIG_FILE))
      problem = "unfinished" if started else "not run"
    else:
      with open(results_path) as f:
        value = _metric_value(json.load(f), metric)
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


def mean_std(values: np.ndarray):
  """(mean, sample std); std NaN for one value, both NaN for none."""
  if values.size == 0:
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


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
      mean_std_text, _, count = text.partition(" (")
      text = f"{mean_std_text} {self.unit} ({count}"
    return text


def format_values(values: np.ndarray, percent: bool = True) -> str:
  """'mean ± std (n = k)' in percent (or raw), never a number for no values."""
  if values.size == 0:
    return "no finished run"
  mean, std = mean_std(values)
  scale, digits = (100.0, 2) if percent else (1.0, 3)
  text = f"{scale * mean:.{digits}f}"
  text += f" ± {scale * std:.{digits}f}" if values.size > 1 else ""
  return f"{text} (n = {values.size})"


# ---------------------------------------------------------------------------------------------------
# The claims

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


class Suite:
  """Loads the cells of a suite workdir: cell(experiment, variant, metric)."""

  def __init__(self, root: str, seeds):
    self.root, self.seeds = root, list(seeds)
    self._cache = {}

  def cell(self, experiment: str, variant: str, metric: str) -> Cell:
    key = (experiment, variant, metric)
    if key not in self._cache:
      self._cache[key] = load_cell(self.root, experiment, variant, self.seeds, metric)
    return self._cache[key]


TEST_AGREE, TRAIN_AGREE = "student.test_agreement", "student.train_agreement"
STUDENT_ACC, TEACHER_ACC = "student.test_accuracy", "ensemble.test_accuracy"
WELL_BELOW = 0.95  # "well below 100 %"
NEAR_ALL = 0.99  # "about 100 %", "over 99 %"


def _row(suite, experiment, variant, columns):
  return (variant, {title: suite.cell(experiment, variant, metric) for title, metric in columns})


_MAIN_COLUMNS = (("teacher acc %", TEACHER_ACC), ("student acc %", STUDENT_ACC),
                 ("test agree %", TEST_AGREE), ("train agree %", TRAIN_AGREE))


def claims(suite: Suite) -> list:
  """C1-C8 over the laptop-scale suite configs/paper/small (experiment and variant names there)."""
  c = suite.cell
  es, dd, ii, ti, tl, fl = ("ensemble_size", "distillation_data", "init_interpolation",
                            "teacher_initial", "training_length", "few_labels")
  out = []

  out.append(Claim(
      "C1", "Self-distillation: accuracy close to the teacher's, agreement well below 100 %",
      "Fig. 1 / section 4, ResNet-56 self-distillation on CIFAR-100: student accuracy about the "
      "teacher's, test agreement about 72-75 %.",
      checks=[
          Check("student acc - teacher acc (m = 1, tau 4) > -3 pp",
                difference(c(es, "tau4_m1", STUDENT_ACC), c(es, "tau4_m1", TEACHER_ACC)),
                -0.03, +1, unit="pp"),
          Check(f"test agreement (m = 1, tau 4) < {100 * WELL_BELOW:g} %",
                c(es, "tau4_m1", TEST_AGREE), WELL_BELOW, -1),
      ],
      table=[_row(suite, es, v, _MAIN_COLUMNS) for v in ("tau1_m1", "tau4_m1")],
      plot=lambda plt, path: _bar_plot(
          plt, path, [("tau1_m1", es, "tau1_m1"), ("tau4_m1", es, "tau4_m1")], suite,
          (("teacher acc", TEACHER_ACC), ("student acc", STUDENT_ACC),
           ("test agreement", TEST_AGREE)),
          "C1: self-distillation (LeNet-5, Fashion-MNIST)")))

  sizes = (1, 3, 5)
  c2_checks = []
  for tau in (1, 4):
    c2_checks.append(Check(
        f"test agreement m = 5 - m = 1 (tau {tau}) > 0",
        difference(c(es, f"tau{tau}_m5", TEST_AGREE), c(es, f"tau{tau}_m1", TEST_AGREE)), 0.0, +1,
        unit="pp"))
    c2_checks.append(Check(
        f"student acc m = 5 - m = 3 (tau {tau}) < 1 pp (saturates)",
        difference(c(es, f"tau{tau}_m5", STUDENT_ACC), c(es, f"tau{tau}_m3", STUDENT_ACC)),
        0.01, -1, unit="pp"))
  c2_checks.append(Check(
      "student acc - teacher acc (m = 1, tau 1) > 0 (the paper says 'may')",
      difference(c(es, "tau1_m1", STUDENT_ACC), c(es, "tau1_m1", TEACHER_ACC)), 0.0, +1,
      unit="pp", binding=False))
  out.append(Claim(
      "C2", "Ensemble size: agreement rises with m, student accuracy saturates",
      "Fig. 3 (tau 1), 5x ResNet-56 on CIFAR-100: test agreement about 77.5 / 82.5 / 84.5 % for "
      "m = 1 / 3 / 5; student accuracy saturates near 75-76 %; with m = 1 the student beats the "
      "teacher.",
      checks=c2_checks,
      table=[_row(suite, es, f"tau{tau}_m{m}", _MAIN_COLUMNS) for tau in (1, 4) for m in sizes],
      plot=lambda plt, path: _ensemble_plot(plt, path, suite, es, sizes)))

  out.append(Claim(
      "C3", "Train agreement, on the distillation data itself, also well below 100 %",
      "Fig. 5 / section 6: ResNet-20 (LayerNorm) self-distillation reaches 78.9 % train agreement "
      "after 300 epochs.",
      checks=[Check(f"train agreement (m = {m}, tau 4) < {100 * WELL_BELOW:g} %",
                    c(es, f"tau4_m{m}", TRAIN_AGREE), WELL_BELOW, -1) for m in (1, 5)],
      table=[_row(suite, es, f"tau4_m{m}", _MAIN_COLUMNS) for m in sizes],
      plot=lambda plt, path: _bar_plot(
          plt, path, [(f"tau4_m{m}", es, f"tau4_m{m}") for m in sizes], suite,
          (("train agreement", TRAIN_AGREE), ("test agreement", TEST_AGREE)),
          "C3: agreement on the distillation (train) data vs test", line=WELL_BELOW)))

  base = lambda metric: c(dd, "baseline", metric)  # noqa: E731
  out.append(Claim(
      "C4", "Distillation data: MixUp helps accuracy more than agreement; noise and OOD lower "
      "agreement; data recycling helps agreement only modestly",
      "Fig. 4 / section 5, 5x ResNet-56 on CIFAR-100, tau 4: baseline test agreement 84.5 %, MixUp "
      "about 86 % with the best accuracy; noise and SVHN data lower agreement; D0 u D1 vs D0 helps "
      "little.",
      checks=[
          Check("MixUp: (student acc gain) - (test agreement gain) over baseline > 0",
                combine_cells(lambda a, a0, g, g0: (a - a0) - (g - g0),
                              c(dd, "mixup", STUDENT_ACC), base(STUDENT_ACC),
                              c(dd, "mixup", TEST_AGREE), base(TEST_AGREE)), 0.0, +1,
                unit="pp"),
          Check("noise: test agreement - baseline < 0",
                difference(c(dd, "noise", TEST_AGREE), base(TEST_AGREE)), 0.0, -1, unit="pp"),
          Check("OOD (CIFAR-10 gray 28x28 appended): test agreement - baseline < 0",
                difference(c(dd, "ood_cifar10", TEST_AGREE), base(TEST_AGREE)), 0.0, -1,
                unit="pp"),
          Check("recycling: test agreement D0 u D1 - D0 < 3 pp (modest)",
                difference(c(dd, "recycle_d0_d1", TEST_AGREE), c(dd, "recycle_d0", TEST_AGREE)),
                0.03, -1, unit="pp"),
      ],
      table=[_row(suite, dd, v, _MAIN_COLUMNS) for v in
             ("baseline", "mixup", "noise", "ood_cifar10", "recycle_d0", "recycle_d0_d1")],
      plot=lambda plt, path: _bar_plot(
          plt, path, [(v, dd, v) for v in ("baseline", "mixup", "noise", "ood_cifar10",
                                           "recycle_d0", "recycle_d0_d1")], suite,
          (("student acc", STUDENT_ACC), ("test agreement", TEST_AGREE)),
          "C4: distillation data (3x LeNet-5 -> LeNet-5, tau 4)")))

  lambdas = ("0", "0.25", "0.375", "0.5", "0.75")
  train = [c(ii, f"lam{lam}", TRAIN_AGREE) for lam in lambdas]
  top = len(lambdas) - 1  # the largest lambda (below 1, where the student starts as the teacher)

  def sharpness(*values):
    """The largest rise between neighbouring lambdas, as a fraction of the rise from lambda = 0 to
    the largest lambda below 1."""
    rise = values[top] - values[0]
    steps = [values[i + 1] - values[i] for i in range(top)]
    return max(steps) / rise if rise > 0 else 0.0

  out.append(Claim(
      "C5", "Initialization interpolation: a sharp jump to about 100 % train agreement above some "
      "lambda",
      "Fig. 6, ResNet-20 (LayerNorm) on CIFAR-100, lr scaled by (1 - lambda): lambda <= 0.25 ends "
      "near 80 % train agreement, 0.375 at 97.6 %, >= 0.5 at >= 99.6 %.",
      checks=[
          Check(f"train agreement at lambda = 0 < {100 * (NEAR_ALL - 0.02):g} %", train[0],
                NEAR_ALL - 0.02, -1),
          Check(f"train agreement at lambda = {lambdas[top]} > {100 * NEAR_ALL:g} %", train[top],
                NEAR_ALL, +1),
          Check("largest rise between neighbouring lambdas / rise from 0 to "
                f"{lambdas[top]} > 0.5 (sharp)", combine_cells(sharpness, *train[:top + 1]), 0.5,
                +1, unit=""),
      ],
      table=[_row(suite, ii, f"lam{lam}", _MAIN_COLUMNS) for lam in lambdas],
      plot=lambda plt, path: _line_plot(
          plt, path, [float(lam) for lam in lambdas],
          {"train agreement": [c(ii, f"lam{lam}", TRAIN_AGREE) for lam in lambdas],
           "test agreement": [c(ii, f"lam{lam}", TEST_AGREE) for lam in lambdas]},
          xlabel="interpolation lambda (student init = lambda teacher + (1 - lambda) random)",
          ylabel="agreement (%)", title="C5: train agreement vs initialization (Fig. 6)",
          line=NEAR_ALL)))

  cka = [("CKA stage1", "student.cka_stage1"), ("CKA stage2", "student.cka_stage2")]
  out.append(Claim(
      "C6", "The teacher's initial weights as the student's start do not raise agreement",
      "Table 1, ResNet-20 on CIFAR-100, 10 trials: random init 77.2 % agreement (KL 0.836), "
      "teacher's initial weights 77.1 % (KL 0.838).",
      checks=[Check("test agreement teacher_initial - random < 1 pp",
                    difference(c(ti, "teacher_initial", TEST_AGREE), c(ti, "random", TEST_AGREE)),
                    0.01, -1, unit="pp")],
      table=[_row(suite, ti, v, _MAIN_COLUMNS + tuple(cka))
             for v in ("random", "teacher_initial")],
      plot=lambda plt, path: _bar_plot(
          plt, path, [(v, ti, v) for v in ("random", "teacher_initial")], suite,
          (("test agreement", TEST_AGREE),) + tuple((t, m) for t, m in cka),
          "C6: student init at random vs the teacher's initial weights (Table 1)",
          ylabel="% (agreement), CKA x 100")))

  multiples = (1, 3, 10)
  out.append(Claim(
      "C7", "Longer training raises train agreement slowly; Adam does not fix it",
      "Fig. 5, ResNet-20 (LayerNorm) self-distillation: train agreement 78.9 / 81.3 / 83.4 % after "
      "300 / 1k / 5k SGD epochs; Adam a bit worse.",
      checks=[
          Check("SGD train agreement 10x - 1x epochs > 0",
                difference(c(tl, "sgd_10x", TRAIN_AGREE), c(tl, "sgd_1x", TRAIN_AGREE)), 0.0, +1,
                unit="pp"),
          Check(f"SGD train agreement at 10x < {100 * NEAR_ALL:g} % (slowly)",
                c(tl, "sgd_10x", TRAIN_AGREE), NEAR_ALL, -1),
          Check(f"Adam train agreement at 10x < {100 * NEAR_ALL:g} % (no fix)",
                c(tl, "adam_10x", TRAIN_AGREE), NEAR_ALL, -1),
      ],
      table=[_row(suite, tl, f"{o}_{k}x", _MAIN_COLUMNS) for o in ("sgd", "adam")
             for k in multiples],
      plot=lambda plt, path: _line_plot(
          plt, path, list(multiples),
          {f"{o.upper()} train agreement": [c(tl, f"{o}_{k}x", TRAIN_AGREE) for k in multiples]
           for o in ("sgd", "adam")},
          xlabel="student epochs (multiples of 3)", ylabel="train agreement (%)",
          title="C7: train agreement vs training length (Fig. 5)", log_x=True)))

  out.append(Claim(
      "C8", "Distillation works with a simple teacher and plenty of same-distribution data",
      "Section 5: LeNet-5 teacher on 200 MNIST images (84-86 % accuracy), distilled on EMNIST: the "
      "student exceeds 99 % test agreement.",
      checks=[Check(f"test agreement > {100 * NEAR_ALL:g} %", c(fl, "labels200", TEST_AGREE),
                    NEAR_ALL, +1)],
      table=[_row(suite, fl, "labels200", _MAIN_COLUMNS)],
      plot=lambda plt, path: _bar_plot(
          plt, path, [("labels200", fl, "labels200")], suite,
          (("teacher acc", TEACHER_ACC), ("student acc", STUDENT_ACC),
           ("test agreement", TEST_AGREE)),
          "C8: teacher from 200 labels, student on 60,000 unlabelled images", line=NEAR_ALL)))
  return out


# ---------------------------------------------------------------------------------------------------
# Plots: one per claim, the paper's figure for it

def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _stats(cell: Cell):
  mean, std = mean_std(cell.array())
  return 100 * mean, 0.0 if math.isnan(std) else 100 * std


def _legend(ax):
  if ax.get_legend_handles_labels()[0]:  # none when no run of the claim has finished
    ax.legend(fontsize=8)


def _save(plt, fig, ax, path):
  ax.grid(alpha=0.3)
  _legend(ax)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _bar_plot(plt, path, rows, suite, metrics, title, line=None, ylabel="%"):
  """Grouped bars: one group per (label, experiment, variant), one bar per metric, mean ± std;
  single seeds as dots."""
  fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) * len(metrics) ** 0.5 + 2), 4.2))
  width = 0.8 / len(metrics)
  for j, (name, metric) in enumerate(metrics):
    for i, (_, experiment, variant) in enumerate(rows):
      cell = suite.cell(experiment, variant, metric)
      x = i + (j - (len(metrics) - 1) / 2) * width
      if cell.values:
        mean, std = _stats(cell)
        ax.bar(x, mean, width, yerr=std, capsize=3, color=f"C{j}", label=name if i == 0 else None)
        ax.plot([x] * len(cell.values), 100 * cell.array(), "k.", markersize=3)
      else:
        ax.text(x, 0, "no run", rotation=90, ha="center", va="bottom", fontsize=7)
  ax.set_xticks(range(len(rows)))
  ax.set_xticklabels([label for label, _, _ in rows], rotation=20, ha="right", fontsize=8)
  low = min([100 * v for name, m in metrics for _, e, var in rows
             for v in suite.cell(e, var, m).values.values()] or [0])
  ax.set_ylim(max(0.0, low - 10), 101)
  if line is not None:
    ax.axhline(100 * line, color="gray", linestyle="--", linewidth=1, label=f"{100 * line:g} %")
  ax.set(ylabel=ylabel, title=title)
  _save(plt, fig, ax, path)


def _line_plot(plt, path, xs, series, *, xlabel, ylabel, title, line=None, log_x=False):
  """Mean ± std against x, one line per series (a list of cells aligned with xs)."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for i, (name, cells) in enumerate(series.items()):
    points = [(x, *_stats(cell)) for x, cell in zip(xs, cells) if cell.values]
    if points:
      x, mean, std = map(np.array, zip(*points))
      ax.errorbar(x, mean, yerr=std, fmt="-o", capsize=3, color=f"C{i}", label=name)
  if line is not None:
    ax.axhline(100 * line, color="gray", linestyle="--", linewidth=1, label=f"{100 * line:g} %")
  if log_x:
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}x" for x in xs])
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  _save(plt, fig, ax, path)


def _ensemble_plot(plt, path, suite, experiment, sizes):
  """Fig. 3: test agreement (left) and accuracy (right) against m, for tau 1 and 4."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, tau in enumerate((1, 4)):
    for ax, metric, style, name in ((left, TEST_AGREE, "-o", "test agreement"),
                                    (right, STUDENT_ACC, "-o", "student"),
                                    (right, TEACHER_ACC, "--s", "teacher ensemble")):
      cells = [suite.cell(experiment, f"tau{tau}_m{m}", metric) for m in sizes]
      points = [(m, *_stats(cell)) for m, cell in zip(sizes, cells) if cell.values]
      if points:
        m, mean, std = map(np.array, zip(*points))
        ax.errorbar(m, mean, yerr=std, fmt=style, capsize=3, color=f"C{i}",
                    label=f"tau {tau}: {name}")
  left.set(xlabel="teacher ensemble size m", ylabel="test agreement (%)",
           title="C2: fidelity vs ensemble size (Fig. 3)")
  right.set(xlabel="teacher ensemble size m", ylabel="test accuracy (%)",
            title="C2: accuracy vs ensemble size")
  for ax in (left, right):
    ax.set_xticks(list(sizes))
  left.grid(alpha=0.3)
  _legend(left)
  _save(plt, fig, right, path)


# ---------------------------------------------------------------------------------------------------
# The report

def _cell_text(cell: Cell, percent: bool) -> str:
  text = format_values(cell.array(), percent)
  if cell.problems:
    text += "; " + "; ".join(p for _, p in sorted(cell.problems.items()))
  return text


def claims_markdown(claim_list, seeds, plots: dict, times: dict = None) -> str:
  lines = ["# Reproduction of Stanton et al. (2021) at laptop scale", "",
           f"Seeds: {', '.join(map(str, seeds))}. Verdict rule: {VERDICT_RULE}", "",
           "| claim | paper | check | ours (mean ± std over seeds) | check verdict | claim verdict |",
           "|---|---|---|---:|---|---|"]
  for claim in claim_list:
    for i, check in enumerate(claim.checks):
      first = i == 0
      tag = "" if check.binding else " (informative)"
      ours = check.ours()
      if check.statistic.problems:
        ours += "; " + "; ".join(sorted(set(check.statistic.problems.values())))
      lines.append(
          f"| {claim.key if first else ''} | {claim.paper if first else ''} | "
          f"{check.text}{tag} | {ours} | {check.verdict} | "
          f"{'**' + claim.verdict + '**' if first else ''} |")
  for claim in claim_list:
    lines += ["", f"## {claim.key}: {claim.title}", "", f"Paper: {claim.paper}", "",
              f"Verdict: **{claim.verdict}**."]
    if claim.problems():
      lines.append("Runs missing, unfinished or diverged (left out of every number): " +
                   "; ".join(claim.problems()) + ".")
    if claim.table:
      titles = list(claim.table[0][1])
      lines += ["", "| variant | " + " | ".join(titles) + " |",
                "|---|" + "---:|" * len(titles)]
      lines += ["| " + label + " | " + " | ".join(_cell_text(cells[t], t.endswith("%")) for t in titles) + " |"
                for label, cells in claim.table]
    if claim.key in plots:
      lines += ["", f"![{claim.key}]({plots[claim.key]})"]
  if times:
    total = sum(times.values())
    lines += ["", "## Wall time", "",
              f"{len(times)} run(s) finished by `kd_jax.reproduce` in this workdir took "
              f"{total / 3600:.2f} h in total (sum of per-run wall times, {TIMES_FILE})."]
  return "\n".join(lines) + "\n"


def read_times(root: str) -> dict:
  """Per-run wall seconds recorded by this module (the latest record of a run wins)."""
  path = os.path.join(root, TIMES_FILE)
  times = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
          times[record["run"]] = float(record["seconds"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
          continue
  return times


def write_claims_report(root: str, seeds, out_dir: str = None, plots: bool = True) -> list:
  """Writes results.md and one PNG per claim to out_dir (default <root>/report); returns the claims."""
  out_dir = out_dir or os.path.join(root, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  claim_list = claims(Suite(root, seeds))
  written = {}
  if plots:
    plt = _pyplot()
    for claim in claim_list:
      name = f"{claim.key.lower()}.png"
      claim.plot(plt, os.path.join(out_dir, name))
      written[claim.key] = name
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(claims_markdown(claim_list, seeds, written, read_times(root)))
  return claim_list


# ---------------------------------------------------------------------------------------------------
# Running the suite

def experiment_files(suite_dir: str) -> list:
  """The suite's experiment files, sorted: every *.py not starting with '_'."""
  if not os.path.isdir(suite_dir):
    raise KdJaxError(f"--suite={suite_dir} is not a folder; use configs/paper/small.")
  files = sorted(path for path in glob.glob(os.path.join(suite_dir, "*.py"))
                 if not os.path.basename(path).startswith("_"))
  if not files:
    raise KdJaxError(f"--suite={suite_dir} holds no experiment file (*.py not starting with '_').")
  return files


def run_suite(suite_dir: str, root: str, seeds, overrides=(), experiments_text: str = "",
              dry_run: bool = False, report_only: bool = False):
  from kd_jax import report, sweep
  files = experiment_files(suite_dir)
  names = [os.path.splitext(os.path.basename(path))[0] for path in files]
  if experiments_text:
    wanted = [n.strip() for n in experiments_text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
      raise KdJaxError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(names)}.")
    files = [path for path, name in zip(files, names) if name in wanted]
  if not report_only:
    experiments = [sweep.Experiment.load(path, os.path.join(root, name), prefix=f"{name}/")
                   for path, name in ((p, os.path.splitext(os.path.basename(p))[0]) for p in files)]
    runs = sweep.plan_experiments(experiments, seeds, overrides)
    todo = sum(not run.done for run in runs)
    print(f"suite {suite_dir}: {len(experiments)} experiment(s), {len(runs)} runs ({todo} to run) "
          f"in {root}", flush=True)
    os.makedirs(root, exist_ok=True)

    def record(run, seconds):
      with open(os.path.join(root, TIMES_FILE), "a") as f:
        f.write(json.dumps({"run": f"{run.prefix}{run.variant}/seed{run.seed}",
                            "seconds": round(seconds, 1)}) + "\n")

    sweep.execute(runs, overrides, dry_run, on_finished=record)
    if dry_run:
      return None
  for path in files:
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    try:
      report.write_report([folder], os.path.join(folder, REPORT_DIR))
    except KdJaxError as e:  # no finished run of this experiment yet
      print(f"note: no report for {name}: {e}", file=sys.stderr)
  claim_list = write_claims_report(root, seeds)
  for claim in claim_list:
    print(f"{claim.key}: {claim.verdict:12s} {claim.title}")
  print(f"\nclaims report written to {os.path.join(root, REPORT_DIR)}/results.md", flush=True)
  return claim_list


def main(argv=None) -> None:
  from kd_jax import sweep
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.reproduce",
      description="Runs a reproduction suite (every experiment file of a folder, several seeds; "
                  "resumable) and computes a verdict per claim of the paper.",
      epilog="Any --config.KEY=VALUE argument overrides that key in every run.")
  parser.add_argument("--suite", default="configs/paper/small", help="folder of experiment files")
  parser.add_argument("--workdir", required=True, help="folder for the runs and report/")
  parser.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
  parser.add_argument("--experiments", default="", help="a subset of the suite's experiments")
  parser.add_argument("--dry-run", action="store_true", help="list the planned runs and stop")
  parser.add_argument("--report-only", action="store_true",
                      help="run nothing: reports and verdicts over the runs in --workdir")
  start = time.time()
  try:
    overrides, rest = sweep.split_overrides(argv)
    args = parser.parse_args(rest)
    run_suite(args.suite, args.workdir, sweep.parse_seeds(args.seeds), overrides,
              args.experiments, args.dry_run, args.report_only)
  except KdJaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume (finished runs are skipped)",
          file=sys.stderr)
    sys.exit(130)
  print(f"took {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
  main()
