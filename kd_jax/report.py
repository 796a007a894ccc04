"""Readable summaries of results: one run's table, and a report over many runs grouped into variants.

  python -m kd_jax.report runs/tau_m --out runs/tau_m/report
  python -m kd_jax.report 'runs/m*/seed*' runs/other_run --out /tmp/report --group-by teacher.ensemble_size

A report reads finished workdirs (config.json + results.json, metrics.jsonl for training curves), groups
the runs whose configs agree on everything but the seed into variants, and writes results.md,
results.csv (one row per variant, mean and std over seeds), runs.csv (one row per run) and PNG plots.
"""

import argparse
import csv
import dataclasses
import glob
import json
import math
import os
import sys
import textwrap

import numpy as np

from kd_jax.errors import KdJaxError
from kd_jax import files
from kd_jax.results import flatten_results
from kd_jax.workdir import (CONFIG_FILE, METRICS_FILE, OPERATIONAL_KEYS, RESULTS_FILE, flatten_config,
                            read_diverged)

# ---------------------------------------------------------------------------------------------------
# Finding and reading runs

VARIANT_FILE = "variant.json"  # written by the sweep next to a finished run: {"experiment", "variant"}
# Keys that do not change what a run computes, so runs differing only there belong to one variant;
# teacher.load_from only says where identical teachers came from (the sweep shares them).
IGNORED_KEYS = ("seed", *OPERATIONAL_KEYS, "teacher.load_from")


@dataclasses.dataclass
class Run:
  """One finished workdir."""
  workdir: str
  config: dict  # flattened: {"distill.temperature": 4.0, ...}
  results: dict
  experiment: str = None  # from variant.json, when the sweep wrote one
  variant: str = None
  variant_index: int = None


def _is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def _search(folder: str) -> list:
  """Workdirs under `folder`; a workdir's own subfolders (checkpoints) are not searched."""
  found = []
  for root, dirs, _ in os.walk(folder):
    if _is_workdir(root):
      found.append(root)
      dirs.clear()
    else:
      dirs.sort()
  return found


def find_workdirs(paths) -> list:
  """Expands workdirs, glob patterns and parent folders into finished workdirs (with results.json).

  Unfinished workdirs are skipped with a note on stderr; a path that matches nothing is an error.
  """
  candidates = []
  for path in paths:
    if any(c in path for c in "*?["):
      matches = sorted(glob.glob(path))
    else:
      matches = [path] if os.path.exists(path) else []
    if not matches:
      raise KdJaxError(f"{path} matches no file or folder.")
    for match in matches:
      if os.path.isdir(match):
        candidates += [match] if _is_workdir(match) else _search(match)
  workdirs, seen = [], set()
  for candidate in candidates:
    real = os.path.realpath(candidate)
    if real in seen:
      continue
    seen.add(real)
    diverged = read_diverged(candidate)
    if os.path.isfile(os.path.join(candidate, RESULTS_FILE)):
      workdirs.append(candidate)
    elif diverged:
      print(f"note: skipping {candidate}: DIVERGED ({diverged})", file=sys.stderr)
    else:
      print(f"note: skipping {candidate}: no {RESULTS_FILE} yet (unfinished run)", file=sys.stderr)
  if not workdirs:
    raise KdJaxError(f"no finished run (a workdir with {CONFIG_FILE} and {RESULTS_FILE}) found in "
                     f"{' '.join(paths)}.")
  return workdirs


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise KdJaxError(f"{path} is damaged ({type(e).__name__}: {e}); rerun that run or leave its "
                     "folder out.") from e


def load_run(workdir: str) -> Run:
  run = Run(workdir=workdir, config=flatten_config(_read_json(os.path.join(workdir, CONFIG_FILE))),
            results=_read_json(os.path.join(workdir, RESULTS_FILE)))
  variant_path = os.path.join(workdir, VARIANT_FILE)
  if os.path.isfile(variant_path):
    label = _read_json(variant_path)
    run.experiment, run.variant = label.get("experiment"), label.get("variant")
    run.variant_index = label.get("variant_index")
  return run


def training_records(workdir: str, phase: str = "student") -> list:
  """The logged training records of `phase`, one per step (a resumed run may log a step twice: the
  later record wins), in step order. Records without a loss (first-step compile times) are dropped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill mid-write
      if record.get("phase") == phase and "loss" in record and "step" in record:
        by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


# ---------------------------------------------------------------------------------------------------
# Variants

@dataclasses.dataclass
class Variant:
  """Runs that differ only in their seed (or share the --group-by values), reported as one row.

  Each seed counts once: a second run of a seed already in the variant (a copy, or the same run in
  two folders) is kept in `duplicates`, out of every statistic, since pooling it would report n = 2
  with a std of 0 for what is one result.
  """
  name: str
  runs: list
  duplicates: list = dataclasses.field(default_factory=list)

  def common(self, key):
    """The config value all runs share, or None where they differ or lack it."""
    values = {json.dumps(run.config.get(key), sort_keys=True) for run in self.runs}
    return json.loads(values.pop()) if len(values) == 1 else None


def _format_value(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return value if isinstance(value, str) else json.dumps(value)


def _variant_key(run: Run, group_by) -> str:
  """The key that puts `run` into its variant: runs with equal keys are seeds of one variant.

  With `group_by` (--group-by config keys) the values of those keys; otherwise the experiment, the
  sweep variant's name and the whole config minus IGNORED_KEYS (the seed and operational keys).
  A JSON string, so that it is hashable and compares nested values by content.
  """
  if group_by:
    return json.dumps([run.config.get(key) for key in group_by])
  config = {k: v for k, v in run.config.items() if k not in IGNORED_KEYS}
  # Named variants stay apart even where configs agree (two experiments' common baseline).
  return json.dumps([run.experiment, run.variant, config], sort_keys=True)


def differing_keys(configs) -> list:
  """Config keys (minus IGNORED_KEYS) whose value is not the same in all of `configs`."""
  keys = sorted(set().union(*configs) - set(IGNORED_KEYS))
  return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _describe(config: dict, keys) -> str:
  return ", ".join(f"{key}={_format_value(config.get(key))}" for key in keys)


def _label(run: Run, experiments: set) -> str:
  if run.variant is None:
    return None
  return f"{run.experiment}/{run.variant}" if len(experiments) > 1 else run.variant


def _sort_key(variant: Variant, keys):
  """Sweep variants in their experiment's order, then the others by their differing values."""
  first = variant.runs[0]
  index = first.variant_index if first.variant_index is not None else math.inf
  values = [(0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else
            (1, 0, json.dumps(v)) for v in (first.config.get(k) for k in keys)]
  return (first.experiment is None, str(first.experiment), index, values, variant.name)


def group_runs(runs, group_by=None) -> list:
  """Groups runs into named variants: by --group-by keys when given, else by config minus the seed.

  Names come from --group-by values, else from variant.json (the sweep's variant names), else from
  the config keys that differ between the variants.
  """
  groups = {}
  for run in runs:
    groups.setdefault(_variant_key(run, group_by), []).append(run)
  variants = [_one_run_per_seed(members) for members in groups.values()]
  keys = list(group_by) if group_by else differing_keys([v.runs[0].config for v in variants])
  experiments = {run.experiment for run in runs if run.variant is not None}
  for variant in variants:
    labels = {_label(run, experiments) for run in variant.runs}
    if group_by:
      variant.name = _describe(variant.runs[0].config, keys)
    elif len(labels) == 1 and None not in labels:
      variant.name = labels.pop()
    else:
      variant.name = _describe(variant.runs[0].config, keys) or _common_folder(variant.runs)
  _disambiguate(variants)
  return sorted(variants, key=lambda v: _sort_key(v, keys))


def _one_run_per_seed(members) -> Variant:
  """The variant of `members`, keeping the first run (by workdir) of each seed and config (runs of
  other configs pooled by --group-by may share a seed)."""
  variant, seen = Variant(name="", runs=[]), set()
  for run in sorted(members, key=lambda r: r.workdir):
    seed = run.config.get("seed")
    key = (json.dumps(seed), _variant_key(run, None))
    if seed is not None and key in seen:
      variant.duplicates.append(run)
    else:
      seen.add(key)
      variant.runs.append(run)
  return variant


def _common_folder(runs) -> str:
  """A name for the only variant of a report: the folder its runs share."""
  common = os.path.commonpath([os.path.abspath(run.workdir) for run in runs])
  return os.path.basename(common) or common


def _disambiguate(variants) -> None:
  """Gives variants that ended up with the same name (a variant rerun with other overrides) the
  config values that tell them apart, and a counter if even those agree."""
  by_name = {}
  for variant in variants:
    by_name.setdefault(variant.name, []).append(variant)
  for name, same in by_name.items():
    if len(same) == 1:
      continue
    keys = differing_keys([v.runs[0].config for v in same])
    for i, variant in enumerate(same):
      detail = _describe(variant.runs[0].config, keys) or f"#{i + 1}"
      variant.name = f"{name} ({detail})"


# ---------------------------------------------------------------------------------------------------
# Metrics: the paper's columns, then any other numeric student result

@dataclasses.dataclass(frozen=True)
class Metric:
  key: str  # column name in results.csv
  title: str  # column title in results.md
  percent: bool
  extract: object  # results.json dict -> float or None


def _entry(role: str, key: str):
  return lambda results: results.get(role, {}).get(key)


def _mean_teacher(key: str):
  def extract(results):
    values = [entry[key] for entry in results.get("teachers", []) if key in entry]
    return float(np.mean(values)) if values else None
  return extract


PAPER_METRICS = (
    Metric("ensemble_test_accuracy", "teacher (ensemble) acc %", True,
           _entry("ensemble", "test_accuracy")),
    Metric("teacher_mean_test_accuracy", "single teacher acc %", True, _mean_teacher("test_accuracy")),
    Metric("student_test_accuracy", "student acc %", True, _entry("student", "test_accuracy")),
    Metric("test_agreement", "test agree %", True, _entry("student", "test_agreement")),
    Metric("test_kl", "test KL", False, _entry("student", "test_kl")),
    Metric("train_agreement", "train agree %", True, _entry("student", "train_agreement")),
    Metric("train_kl", "train KL", False, _entry("student", "train_kl")),
    Metric("student_test_nll", "student NLL", False, _entry("student", "test_nll")),
    Metric("student_test_ece", "student ECE %", True, _entry("student", "test_ece")),
)
# Student results the paper's columns already show or that are routine (train accuracy, NLL, ECE).
_KNOWN_STUDENT_KEYS = {f"{split}_{name}" for split in ("test", "train")
                       for name in ("accuracy", "nll", "ece", "agreement", "kl")}


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_metrics(runs) -> list:
  """PAPER_METRICS plus a column per other numeric student result (augmented agreement, CKA, ...)."""
  extra = sorted({key for run in runs for key, value in run.results.get("student", {}).items()
                  if key not in _KNOWN_STUDENT_KEYS and _is_number(value)})
  percent_words = ("accuracy", "agreement", "ece")
  return list(PAPER_METRICS) + [
      Metric(f"student_{key}", f"student {key}" + (" %" if any(w in key for w in percent_words)
                                                   else ""),
             any(w in key for w in percent_words), _entry("student", key))
      for key in extra]


def metric_values(variant: Variant, metric: Metric) -> np.ndarray:
  """The metric of each run of the variant that has it."""
  values = [metric.extract(run.results) for run in variant.runs]
  return np.array([v for v in values if _is_number(v) and math.isfinite(v)], dtype=np.float64)


def mean_std(values: np.ndarray):
  """(mean, sample std) of a metric over seeds; std is 0 for one seed, both NaN for none."""
  if values.size == 0:
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _format_cell(values: np.ndarray, percent: bool) -> str:
  if values.size == 0:
    return "-"
  mean, std = mean_std(values)
  scale, digits = (100.0, 2) if percent else (1.0, 4)
  cell = f"{scale * mean:.{digits}f}"
  return cell if values.size == 1 else f"{cell} ± {scale * std:.{digits}f}"


# ---------------------------------------------------------------------------------------------------
# Tables

def markdown_table(variants, metrics) -> str:
  header = ["variant", "n"] + [metric.title for metric in metrics]
  rows = [[variant.name.replace("|", "\\|"), str(len(variant.runs))] +
          [_format_cell(metric_values(variant, metric), metric.percent) for metric in metrics]
          for variant in variants]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def write_csv(path: str, variants, metrics, config_keys) -> None:
  """One row per variant: its config values that set it apart, then mean and std of each metric
  (fractions, not percent)."""
  with files.atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variant", "n", *config_keys] +
                    [f"{m.key}_{stat}" for m in metrics for stat in ("mean", "std")])
    for variant in variants:
      stats = [mean_std(metric_values(variant, m)) for m in metrics]
      writer.writerow([variant.name, len(variant.runs),
                       *[_format_value(variant.common(k)) for k in config_keys],
                       *[f"{x:.6g}" for pair in stats for x in pair]])


def write_runs_csv(path: str, variants) -> None:
  """One row per run with every number of its results.json, for analyses the report does not do."""
  rows = [(variant.name, run, flatten_results(run.results)) for variant in variants
          for run in variant.runs]
  columns = sorted({key for _, _, flat in rows for key, value in flat.items() if _is_number(value)})
  with files.atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variant", "seed", "workdir", *columns])
    for name, run, flat in rows:
      writer.writerow([name, run.config.get("seed"), run.workdir] +
                      [f"{flat[c]:.6g}" if c in flat else "" for c in columns])


def _markdown_document(table: str, variants, plots) -> str:
  runs = sum(len(v.runs) for v in variants)
  lines = [
      "# Results", "",
      f"{len(variants)} variant(s), {runs} run(s). Cells are mean ± sample std over seeds (n runs); "
      "agreement and KL compare the student with the teacher ensemble at temperature 1, on the test "
      "set and in a clean (unaugmented) pass over the train set. Teacher accuracy is the ensemble's; "
      "single teacher accuracy averages its members.", "",
      table, "",
  ]
  duplicated = [(v, run) for v in variants for run in v.duplicates]
  if duplicated:
    lines += ["**Runs left out: same seed as a run already counted in their variant** (pooling them "
              "would report one result as n = 2 with std 0):", ""]
    lines += [f"- {v.name}: seed {run.config.get('seed')} again in {run.workdir}"
              for v, run in duplicated]
    lines.append("")
  lines += [f"![{name}]({name})" for name in plots]
  lines += ["", "Runs:", ""]
  lines += [f"- {v.name}: " + ", ".join(run.workdir for run in v.runs) for v in variants]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Plots (matplotlib is imported only here, when a report draws them)

def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _colors(plt, count: int) -> list:
  cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
  return [cmap(i % cmap.N) for i in range(count)]


def _percent_stats(variant: Variant, metric: Metric):
  mean, std = mean_std(metric_values(variant, metric))
  return 100 * mean, 100 * std


def _metric(key: str) -> Metric:
  return next(m for m in PAPER_METRICS if m.key == key)


_SHORT_NAME = 16  # characters of a variant name that fit next to its point


def _scatter(plt, variants, x_key: str, y_key: str, path: str, *, xlabel: str, ylabel: str,
             title: str, diagonal: bool = False) -> bool:
  """Mean ± std of two metrics, one labelled point per variant; False when no variant has both."""
  points = [(v, color, _percent_stats(v, _metric(x_key)), _percent_stats(v, _metric(y_key)))
            for v, color in zip(variants, _colors(plt, len(variants)))]
  points = [p for p in points if not (math.isnan(p[2][0]) or math.isnan(p[3][0]))]
  if not points:
    return False
  fig, ax = plt.subplots(figsize=(7, 5.5))
  # Long names (config keys) would overlap next to the points: number those, name them in the legend.
  numbered = any(len(p[0].name) > _SHORT_NAME for p in points)
  for i, (variant, color, (x, xerr), (y, yerr)) in enumerate(points, 1):
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, elinewidth=1,
                alpha=0.85, label=f"{i}: {variant.name}" if numbered else variant.name)
    ax.annotate(str(i) if numbered else variant.name, (x, y), textcoords="offset points",
                xytext=(5, 5), fontsize=9 if numbered else 8)
  ax.margins(0.15)
  if diagonal:
    # Same range on both axes around the points, fixed before the (infinite) y = x line is drawn.
    ax.autoscale_view()
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    low, high = min(x_low, y_low), max(x_high, y_high)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.axline((0, 0), (100, 100), color="gray", linestyle="--", linewidth=1, label="y = x")
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path, legend_entries=len(points) + diagonal)
  return True


_LEGEND_WIDTH = 40  # characters per legend line


def _legend_label(text: str) -> str:
  """Long labels (variants named by several config keys) wrapped into lines of _LEGEND_WIDTH
  characters, so that the legend beside the axes cannot squash them."""
  return textwrap.fill(text, _LEGEND_WIDTH, break_long_words=True, break_on_hyphens=False)


def _finish(plt, fig, ax, path: str, legend_entries: int) -> None:
  """Saves the figure with the legend outside the axes, labels wrapped (variant names can be long)."""
  if legend_entries:
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [_legend_label(label) for label in labels], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  with files.atomic_path(path) as temporary:
    fig.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
  plt.close(fig)


def plot_ensemble_size(plt, variants, path: str) -> bool:
  """Agreement and accuracy against m: one line per setting of the other differing keys."""
  sizes = {v.common("teacher.ensemble_size") for v in variants}
  if None in sizes or len(sizes) < 2:
    return False
  others = [k for k in differing_keys([v.runs[0].config for v in variants])
            if k != "teacher.ensemble_size"]
  series = {}
  for variant in variants:
    series.setdefault(_describe(variant.runs[0].config, others), []).append(variant)
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  for (name, members), color in zip(series.items(), _colors(plt, len(series))):
    members.sort(key=lambda v: v.common("teacher.ensemble_size"))
    m = [v.common("teacher.ensemble_size") for v in members]
    prefix = f"{name}: " if name else ""
    for ax, key, style, label in (
        (left, "test_agreement", "-o", "test agreement"),
        (right, "student_test_accuracy", "-o", "student"),
        (right, "ensemble_test_accuracy", "--s", "teacher ensemble")):
      stats = np.array([_percent_stats(v, _metric(key)) for v in members])
      ax.errorbar(m, stats[:, 0], yerr=stats[:, 1], fmt=style, color=color, capsize=3,
                  label=prefix + label)
  left.set(xlabel="teacher ensemble size m", ylabel="test agreement (%)",
           title="Fidelity vs ensemble size")
  right.set(xlabel="teacher ensemble size m", ylabel="test accuracy (%)",
            title="Accuracy vs ensemble size")
  for ax in (left, right):
    ax.set_xticks(sorted(sizes))
    ax.grid(alpha=0.3)
  handles, labels = left.get_legend_handles_labels()
  left.legend(handles, [_legend_label(label) for label in labels], fontsize=8)
  _finish(plt, fig, right, path, legend_entries=1)
  return True


def plot_against_key(plt, variants, key: str, path: str, *, xlabel: str, title: str,
                     log_x: bool = False) -> bool:
  """Train and test agreement (mean ± std) against a numeric config key, one pair of lines per
  setting of the other differing keys; False unless the key takes at least two values."""
  values = [v.common(key) for v in variants]
  if any(not _is_number(x) for x in values) or len(set(values)) < 2:
    return False
  others = [k for k in differing_keys([v.runs[0].config for v in variants]) if k != key]
  series = {}
  for variant in variants:
    series.setdefault(_describe(variant.runs[0].config, others), []).append(variant)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (name, members), color in zip(series.items(), _colors(plt, len(series))):
    members.sort(key=lambda v: v.common(key))
    xs = [v.common(key) for v in members]
    prefix = f"{name}: " if name else ""
    for metric, style, label in (("train_agreement", "-o", "train agreement"),
                                 ("test_agreement", "--s", "test agreement")):
      stats = np.array([_percent_stats(v, _metric(metric)) for v in members])
      ax.errorbar(xs, stats[:, 0], yerr=stats[:, 1], fmt=style, color=color, capsize=3,
                  label=prefix + label)
  if log_x:
    ax.set_xscale("log")
  ax.set(xlabel=xlabel, ylabel="agreement with the teacher (%)", title=title)
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path, legend_entries=1)
  return True


def _mean_curve(variant: Variant, field: str):
  """(steps, mean over the variant's runs) of one training-record field, per logged step."""
  per_step = {}
  for run in variant.runs:
    for record in training_records(run.workdir):
      if _is_number(record.get(field)):
        per_step.setdefault(record["step"], []).append(record[field])
  steps = sorted(per_step)
  return np.array(steps), np.array([np.mean(per_step[s]) for s in steps])


def plot_training_curves(plt, variants, path: str) -> bool:
  curves = [(v, color, _mean_curve(v, "loss"), _mean_curve(v, "agreement"))
            for v, color in zip(variants, _colors(plt, len(variants)))]
  curves = [c for c in curves if c[2][0].size]
  if not curves:
    return False
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for variant, color, (loss_steps, loss), (agree_steps, agreement) in curves:
    # A line needs two points: a run that logged once (a short run) is drawn as a marker.
    left.plot(loss_steps, loss, color=color, label=variant.name,
              marker="o" if loss_steps.size < 2 else None)
    if agree_steps.size:
      right.plot(agree_steps, 100 * agreement, color=color, label=variant.name,
                 marker="o" if agree_steps.size < 2 else None)
  # Losses of different temperatures differ by tau^2: a log axis keeps them all readable.
  if all((c[2][1] > 0).all() for c in curves):
    left.set_yscale("log")
  left.set(xlabel="student step", ylabel="training loss", title="Student loss")
  right.set(xlabel="student step", ylabel="batch agreement (%)",
            title="Agreement on augmented training batches (running)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
  _finish(plt, fig, right, path, legend_entries=len(curves))
  return True


def write_plots(variants, out_dir: str) -> list:
  """Writes the plots that the data supports; returns their file names."""
  plt = _pyplot()
  plots = {
      "agreement_vs_accuracy.png": lambda path: _scatter(
          plt, variants, "test_agreement", "student_test_accuracy", path,
          xlabel="test agreement with teacher (%)", ylabel="student test accuracy (%)",
          title="Fidelity vs generalization"),
      "agreement_vs_ensemble_size.png": lambda path: plot_ensemble_size(plt, variants, path),
      "train_vs_test_agreement.png": lambda path: _scatter(
          plt, variants, "test_agreement", "train_agreement", path,
          xlabel="test agreement (%)", ylabel="train agreement (%)",
          title="Agreement on the distillation (train) set vs the test set", diagonal=True),
      "training_curves.png": lambda path: plot_training_curves(plt, variants, path),
      # The paper's Fig. 6 (initialization interpolation) and Fig. 5 (training length).
      "agreement_vs_init_lambda.png": lambda path: plot_against_key(
          plt, variants, "student.init_lambda", path,
          xlabel="student init lambda (lambda teacher + (1 - lambda) random)",
          title="Agreement vs initialization interpolation"),
      "agreement_vs_student_epochs.png": lambda path: plot_against_key(
          plt, variants, "student.epochs", path, xlabel="student epochs",
          title="Agreement vs training length", log_x=True),
  }
  written = []
  for name, draw in plots.items():
    path = os.path.join(out_dir, name)
    if draw(path):
      written.append(name)
    elif os.path.exists(path):
      os.remove(path)  # left by an earlier report of other runs: it would no longer match the table
  return written


# ---------------------------------------------------------------------------------------------------
# Entry points

def write_report(paths, out_dir: str, group_by=None, plots: bool = True) -> str:
  """Writes results.md, results.csv, runs.csv and plots for the runs in `paths`; returns the table."""
  runs = [load_run(workdir) for workdir in find_workdirs(paths)]
  group_by = [key.strip() for key in group_by or () if key.strip()]
  unknown = [key for key in group_by if all(key not in run.config for run in runs)]
  if unknown:
    raise KdJaxError(f"--group-by key {unknown[0]!r} is in no run's config; use dotted config keys "
                     "as in config.json, e.g. teacher.ensemble_size.")
  variants = group_runs(runs, group_by)
  metrics = report_metrics(runs)
  table = markdown_table(variants, metrics)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise KdJaxError(f"--out {out_dir} is a file; give a folder for the report.")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise KdJaxError(f"cannot create --out {out_dir} ({e.strerror or e}); give a folder you can "
                     "write to.") from e
  config_keys = group_by or differing_keys([v.runs[0].config for v in variants])
  write_csv(os.path.join(out_dir, "results.csv"), variants, metrics, config_keys)
  write_runs_csv(os.path.join(out_dir, "runs.csv"), variants)
  images = write_plots(variants, out_dir) if plots else []
  files.write_text(os.path.join(out_dir, "results.md"), _markdown_document(table, variants, images))
  return table


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.report",
      description="Tables and plots over finished kd_jax runs, one row per variant (mean ± std over "
                  "seeds).")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run folders, glob patterns, or folders to search for runs")
  parser.add_argument("--out", required=True, metavar="DIR", help="folder for results.md/csv, PNGs")
  parser.add_argument("--group-by", default="", metavar="KEY[,KEY]",
                      help="pool runs by these config keys (e.g. teacher.ensemble_size) instead of "
                           "by their whole config minus the seed")
  parser.add_argument("--no-plots", action="store_true", help="tables only (faster)")
  args = parser.parse_args(argv)
  try:
    table = write_report(args.workdirs, args.out, args.group_by.split(","), plots=not args.no_plots)
  except KdJaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(table)
  print(f"\nwritten to {args.out}/")


if __name__ == "__main__":
  main()
