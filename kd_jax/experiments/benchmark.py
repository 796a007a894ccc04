"""The methods benchmark's part of a report: runs that differ in their distillation method
(configs/benchmark/), one row per teacher -> student pair and method, mean ± std over seeds.

  benchmark.md   one table per pair: the teacher's accuracy, the student's top-1 at the last epoch
                 and at its best epoch (with that epoch and the test agreement there), test and
                 train agreement, KL, NLL, ECE and linear CKA per stage where runs record them;
                 then the papers' layout, pairs x methods, of the top-1 at the best and last epoch
                 and of the test agreement; then what the runs show about fidelity across methods,
                 each method against ce and kd by the rule of method_fidelity.py
  benchmark.csv  one row per pair and method: mean and std of each metric (fractions, not percent)
  method_agreement_vs_accuracy.png   test agreement against test accuracy (last epoch), one point
                 per method, a marker per pair (kd_jax/experiments/plots.py)

A run's method is config.distill.method; the paper's objective with alpha = 1 (no distillation
term) is 'ce', the student on the labels alone. A run's pair is its teacher's and student's
model.name. Statistics are kd_jax/experiments/stats.py's (a single seed has no std).
"""

import csv
import dataclasses
import math
import os

from kd_jax import files
from kd_jax.experiments import method_fidelity
from kd_jax.experiments import plots as plots_lib
from kd_jax.experiments import runs as runs_lib
from kd_jax.experiments.stats import error_bar, mean_std, mean_std_text

Metric = runs_lib.Metric
BASELINE = "ce"  # the paper's objective at alpha = 1: cross-entropy alone
TABLE_FILE, CSV_FILE = "benchmark.md", "benchmark.csv"
PLOT_FILE = "method_agreement_vs_accuracy.png"

# The columns of a pair's table, before the CKA columns some runs add.
METRICS = (
    Metric("teacher_test_accuracy", "teacher acc %", True, "teachers.test_accuracy"),
    Metric("student_test_accuracy", "top-1 % (last epoch)", True, "student.test_accuracy"),
    Metric("student_best_test_accuracy", "top-1 % (best epoch)", True,
           "student.best_test_accuracy"),
    Metric("student_best_test_accuracy_epoch", "best epoch", False,
           "student.best_test_accuracy_epoch", digits=1),
    Metric("test_agreement", "test agree %", True, "student.test_agreement"),
    Metric("best_test_agreement", "test agree % (best epoch)", True,
           "student.best_test_agreement"),
    Metric("train_agreement", "train agree %", True, "student.train_agreement"),
    Metric("test_kl", "test KL", False, "student.test_kl"),
    Metric("train_kl", "train KL", False, "student.train_kl"),
    Metric("student_test_nll", "test NLL", False, "student.test_nll"),
    Metric("student_test_ece", "test ECE %", True, "student.test_ece"),
)
CKA_PREFIX = "cka_"  # the student's linear CKA with the teacher per stage (kd_jax/evaluation.py)
# The papers' layout: one table per metric, pairs x methods.
GRID_METRICS = ("student_best_test_accuracy", "student_test_accuracy", "test_agreement")


def method_label(config: dict) -> str:
  """The method of a run's flattened config: distill.method, or 'ce' for the paper's objective at
  alpha = 1 ('paper' at any other alpha)."""
  method = config.get("distill.method", "paper")
  if method == "paper" and config.get("distill.alpha") == 1.0:
    return BASELINE
  return method


def pair_label(config: dict) -> str:
  return f"{config.get('teacher.model.name')} -> {config.get('student.model.name')}"


def is_benchmark(variants) -> bool:
  """Whether the variants compare methods: more than one method label among them."""
  return len({method_label(v.runs[0].config) for v in variants}) > 1


@dataclasses.dataclass
class Row:
  """One variant of the benchmark: its pair and method (the variant's name where two variants of a
  pair share a method)."""
  pair: str
  method: str
  variant: object


def benchmark_rows(variants) -> list:
  """Rows in the variants' order, grouped by pair (pairs in order of first appearance)."""
  rows = [Row(pair_label(v.runs[0].config), method_label(v.runs[0].config), v) for v in variants]
  for row in rows:
    if sum(r.pair == row.pair and r.method == row.method for r in rows) > 1:
      row.method = f"{row.method} ({row.variant.name})"
  pairs = list(dict.fromkeys(row.pair for row in rows))
  return sorted(rows, key=lambda row: pairs.index(row.pair))


def benchmark_metrics(variants) -> list:
  """METRICS the runs have, then a CKA column per stage some run records."""
  stages = sorted({key for v in variants for run in v.runs
                   for key, value in run.results.get("student", {}).items()
                   if key.startswith(CKA_PREFIX) and runs_lib.result_value(
                       run.results, f"student.{key}") is not None})
  metrics = [m for m in METRICS if any(v.values(m).size for v in variants)]
  return metrics + [Metric(f"student_{key}", f"CKA {key[len(CKA_PREFIX):]}", False,
                           f"student.{key}") for key in stages]


def cell(values, metric: Metric) -> str:
  """'mean ± std' over seeds: percent with 2 decimals, else 4 decimals (or the metric's digits);
  '-' without values."""
  digits = metric.digits if metric.digits is not None else 2 if metric.percent else 4
  return mean_std_text(values, 100.0 if metric.percent else 1.0, digits) or "-"


def _markdown(header, rows, label_columns: int = 1) -> list:
  """A markdown table whose first `label_columns` columns are text (left) and the rest numbers."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * label_columns + ["---:"] * (len(header) - label_columns)) + "|"]
  return lines + ["| " + " | ".join(cell_.replace("|", "\\|") for cell_ in row) + " |"
                  for row in rows]


def pair_tables(rows, metrics) -> str:
  """One markdown table per pair: a row per method, a column per metric."""
  lines = []
  for pair in dict.fromkeys(row.pair for row in rows):
    members = [row for row in rows if row.pair == pair]
    lines += [f"### {pair}", ""]
    lines += _markdown(["method", "n"] + [m.title for m in metrics],
                       [[row.method, str(len(row.variant.runs))] +
                        [cell(row.variant.values(m), m) for m in metrics] for row in members],
                       label_columns=2)
    lines.append("")
  return "\n".join(lines)


def grid_table(rows, metric: Metric) -> str:
  """The papers' layout of one metric: a row per pair, a column per method."""
  methods = list(dict.fromkeys(row.method for row in rows))
  pairs = list(dict.fromkeys(row.pair for row in rows))
  by_key = {(row.pair, row.method): row for row in rows}
  table = [[pair] + [cell(by_key[(pair, m)].variant.values(metric), metric)
                     if (pair, m) in by_key else "-" for m in methods] for pair in pairs]
  return "\n".join(_markdown(["teacher -> student", *methods], table))


def markdown_document(variants) -> str:
  rows = benchmark_rows(variants)
  metrics = benchmark_metrics(variants)
  lines = [
      "# Methods benchmark", "",
      "Cells are mean ± sample std over seeds (n runs). top-1 at the last epoch is the final "
      "evaluation's (RepDistiller / CRD report it); at the best epoch, the best of the student's "
      "periodic test evaluations (mdistiller / DKD report it), with the epoch it was reached "
      "and the test agreement there. Agreement and KL compare the student with its teacher at "
      "temperature 1, on the test set and in a clean pass over the train set; CKA is linear CKA "
      "of teacher and student activations at the end of each stage, on test images. 'ce' is the "
      "student trained on the labels alone.", "",
      pair_tables(rows, metrics)]
  titles = {m.key: m for m in metrics}
  for key in GRID_METRICS:
    if key in titles:
      lines += [f"## {titles[key].title}, by pair and method", "", grid_table(rows, titles[key]),
                ""]
  fidelity = method_fidelity.markdown_section(rows)
  if fidelity:
    lines.append(fidelity)
  return "\n".join(lines) + "\n"


def write_csv(path: str, variants) -> None:
  rows, metrics = benchmark_rows(variants), benchmark_metrics(variants)
  with files.atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["pair", "method", "variant", "n"] +
                    [f"{m.key}_{stat}" for m in metrics for stat in ("mean", "std")])
    for row in rows:
      stats = [mean_std(row.variant.values(m)) for m in metrics]
      writer.writerow([row.pair, row.method, row.variant.name, len(row.variant.runs),
                       *[f"{x:.6g}" for pair in stats for x in pair]])


def plot_points(variants) -> list:
  """(method, pair, (accuracy, std), (agreement, std)) in percent of every row with both."""
  accuracy, agreement = METRICS[1], METRICS[4]
  points = [(row.method, row.pair, error_bar(row.variant.values(accuracy)),
             error_bar(row.variant.values(agreement))) for row in benchmark_rows(variants)]
  return [p for p in points if not (math.isnan(p[2][0]) or math.isnan(p[3][0]))]


def write_benchmark(variants, out_dir: str, plots: bool = True) -> list:
  """Writes benchmark.md, benchmark.csv and (with `plots`, where runs have the numbers) the plot
  into `out_dir`; returns the file names written."""
  files.write_text(os.path.join(out_dir, TABLE_FILE), markdown_document(variants))
  write_csv(os.path.join(out_dir, CSV_FILE), variants)
  written = [TABLE_FILE, CSV_FILE]
  path = os.path.join(out_dir, PLOT_FILE)
  points = plot_points(variants) if plots else []
  if points:
    plots_lib.methods_agreement_vs_accuracy(plots_lib.pyplot(), path, points)
    written.append(PLOT_FILE)
  elif os.path.exists(path):
    os.remove(path)  # left by an earlier report of other runs
  return written
