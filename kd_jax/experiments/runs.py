"""Finished runs on disk: finding workdirs, reading them and their metrics, grouping them into
variants.

A run is a workdir with config.json and results.json (metrics.jsonl for training curves, and
variant.json where the sweep names it). Runs whose configs agree on everything but the seed (and the
operational keys) are the seeds of one variant; the report shows one row per variant.
"""

import dataclasses
import glob
import json
import math
import os
import sys

import numpy as np

from kd_jax import files
from kd_jax.errors import KdJaxError
from kd_jax.experiments.stats import is_number
from kd_jax.workdir import (CONFIG_FILE, METRICS_FILE, OPERATIONAL_KEYS, RESULTS_FILE, flatten_config,
                            read_diverged, read_json, read_results)

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
  """Expands workdirs, glob patterns and parent folders into finished workdirs (whose results.json
  parses).

  Unfinished workdirs (and those whose results.json is damaged) are skipped with a note on stderr; a
  path that matches nothing is an error.
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
    if read_results(candidate) is not None:
      workdirs.append(candidate)
    elif os.path.isfile(os.path.join(candidate, RESULTS_FILE)):
      print(f"note: skipping {candidate}: its {RESULTS_FILE} is damaged (rerun it to evaluate it "
            "again)", file=sys.stderr)
    elif diverged:
      print(f"note: skipping {candidate}: DIVERGED ({diverged})", file=sys.stderr)
    else:
      print(f"note: skipping {candidate}: no {RESULTS_FILE} yet (unfinished run)", file=sys.stderr)
  if not workdirs:
    raise KdJaxError(f"no finished run (a workdir with {CONFIG_FILE} and {RESULTS_FILE}) found in "
                     f"{' '.join(paths)}.")
  return workdirs


def load_run(workdir: str) -> Run:
  config = read_json(os.path.join(workdir, CONFIG_FILE), "the run's config")
  run = Run(workdir=workdir, config=flatten_config(config),
            results=read_json(os.path.join(workdir, RESULTS_FILE), "the run's results"))
  variant_path = os.path.join(workdir, VARIANT_FILE)
  if os.path.isfile(variant_path):
    label = read_json(variant_path, "the sweep's name of the run")
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
  for record in files.read_jsonl(path):
    if record.get("phase") == phase and "loss" in record and "step" in record:
      by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


def result_value(results: dict, name: str):
  """The number `name` of a results.json dict: 'student.test_agreement', 'ensemble.test_accuracy',
  or 'teachers.test_accuracy' (the mean over the members); None where it is absent or not a number.
  """
  role, key = name.split(".", 1)
  if role == "compression":  # nested: 'compression.student.flops_per_image'
    value = results.get("compression")
    for part in key.split("."):
      if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        value = value[int(part)]  # a teacher's entry
      else:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if is_number(value) else None
  if role == "teachers":
    values = [entry.get(key) for entry in results.get("teachers", [])]
    if not values or not all(is_number(v) for v in values):
      return None
    return float(np.mean(values))
  value = results.get(role, {}).get(key)
  return float(value) if is_number(value) else None


# ---------------------------------------------------------------------------------------------------
# Metrics: the paper's columns, then any other numeric student result

@dataclasses.dataclass(frozen=True)
class Metric:
  key: str  # column name in results.csv
  title: str  # column title in results.md
  percent: bool
  name: str  # the number in results.json, as result_value reads it
  digits: int = None  # decimals shown (None: 2 for percent, 4 otherwise)


PAPER_METRICS = (
    Metric("ensemble_test_accuracy", "teacher (ensemble) acc %", True, "ensemble.test_accuracy"),
    Metric("teacher_mean_test_accuracy", "single teacher acc %", True, "teachers.test_accuracy"),
    Metric("student_test_accuracy", "student acc %", True, "student.test_accuracy"),
    Metric("test_agreement", "test agree %", True, "student.test_agreement"),
    Metric("test_kl", "test KL", False, "student.test_kl"),
    Metric("train_agreement", "train agree %", True, "student.train_agreement"),
    Metric("train_kl", "train KL", False, "student.train_kl"),
    Metric("student_test_nll", "student NLL", False, "student.test_nll"),
    Metric("student_test_ece", "student ECE %", True, "student.test_ece"),
)
# The student's best test accuracy over its periodic evaluations (config.evaluation.every_steps;
# kd_jax/metrics_log.py best_evaluation), beside student.test_accuracy, its last epoch's: the two
# figures the CIFAR-100 distillation benchmark's papers report, shown where runs have them.
BEST_EPOCH_METRICS = (
    Metric("student_best_test_accuracy", "student acc % (best epoch)", True,
           "student.best_test_accuracy"),
    Metric("student_best_test_accuracy_epoch", "best epoch", False,
           "student.best_test_accuracy_epoch", digits=1),
    Metric("student_best_test_agreement", "test agree % at best epoch", True,
           "student.best_test_agreement"),
)
LAST_EPOCH_TITLE = "student acc % (last epoch)"  # student_test_accuracy's title beside them
# Student results the paper's columns (and the best-epoch ones) already show or that are routine
# (train accuracy, NLL, ECE; the best's step, its count of evaluations, the last's duplicate).
_KNOWN_STUDENT_KEYS = {f"{split}_{name}" for split in ("test", "train")
                       for name in ("accuracy", "nll", "ece", "agreement", "kl")} | {
                           "best_test_accuracy", "best_test_accuracy_step",
                           "best_test_accuracy_epoch", "best_test_agreement", "test_evaluations",
                           "last_test_accuracy", "last_epoch"}


# What distillation saved (results.json's "compression", kd_jax/compression.py), where runs have it.
COMPRESSION_METRICS = (
    Metric("student_params", "student params", False, "compression.student.params"),
    Metric("student_flops_per_image", "student FLOPs/img", False,
           "compression.student.flops_per_image"),
    Metric("student_latency_batch1_s", "student latency b1 s", False,
           "compression.student.latency_batch1_s"),
    Metric("ensemble_flops_per_image", "ensemble FLOPs/img", False,
           "compression.ensemble.flops_per_image"),
    Metric("teacher_flops_per_image", "teacher FLOPs/img", False,
           "compression.teachers.0.flops_per_image"),
    Metric("student_vs_ensemble_params", "params / ensemble", False,
           "compression.student_vs_ensemble.params"),
    Metric("student_vs_ensemble_flops", "FLOPs / ensemble", False,
           "compression.student_vs_ensemble.flops_per_image"),
    Metric("accuracy_kept", "acc kept %", True, "compression.student_vs_ensemble.accuracy_kept"),
)


def paper_metric(key: str) -> Metric:
  """The PAPER_METRICS (or BEST_EPOCH_METRICS, COMPRESSION_METRICS) entry of results.csv column
  `key`."""
  return next(m for m in PAPER_METRICS + BEST_EPOCH_METRICS + COMPRESSION_METRICS if m.key == key)


def has_best_epoch(runs) -> bool:
  """Whether some run recorded its best epoch (periodic evaluations)."""
  return any(result_value(run.results, BEST_EPOCH_METRICS[0].name) is not None for run in runs)


def report_metrics(runs) -> list:
  """PAPER_METRICS (the student's accuracy titled as its last epoch's, followed by the
  BEST_EPOCH_METRICS, when some run has those), the COMPRESSION_METRICS some run has, and a column
  per other numeric student result (augmented agreement, CKA, ...)."""
  extra = sorted({key for run in runs for key, value in run.results.get("student", {}).items()
                  if key not in _KNOWN_STUDENT_KEYS and is_number(value)})
  percent_words = ("accuracy", "agreement", "ece")
  compression = [m for m in COMPRESSION_METRICS
                 if any(result_value(run.results, m.name) is not None for run in runs)]
  paper = list(PAPER_METRICS)
  if has_best_epoch(runs):
    at = [m.key for m in paper].index("student_test_accuracy")
    paper[at:at + 1] = [dataclasses.replace(paper[at], title=LAST_EPOCH_TITLE),
                        *BEST_EPOCH_METRICS]
  return paper + compression + [
      Metric(f"student_{key}", f"student {key}" + (" %" if any(w in key for w in percent_words)
                                                   else ""),
             any(w in key for w in percent_words), f"student.{key}")
      for key in extra]


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

  def values(self, metric: Metric) -> np.ndarray:
    """The metric of each run of the variant that has it (finite values only)."""
    values = [result_value(run.results, metric.name) for run in self.runs]
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def format_value(value) -> str:
  """A config value as the report shows it: floats in %g, strings bare, the rest as JSON."""
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


def describe(config: dict, keys) -> str:
  """'key=value, ...' of a flattened config: a variant's name from the keys that set it apart."""
  return ", ".join(f"{key}={format_value(config.get(key))}" for key in keys)


def series_by_other_keys(variants, key: str) -> dict:
  """The variants grouped by the differing config keys other than `key`, each group sorted by `key`:
  {description of those keys: [variants]}, the lines of a plot against `key`."""
  others = [k for k in differing_keys([v.runs[0].config for v in variants]) if k != key]
  series = {}
  for variant in variants:
    series.setdefault(describe(variant.runs[0].config, others), []).append(variant)
  for members in series.values():
    members.sort(key=lambda v: v.common(key))
  return series


def _label(run: Run, experiments: set) -> str:
  if run.variant is None:
    return None
  return f"{run.experiment}/{run.variant}" if len(experiments) > 1 else run.variant


def _sort_key(variant: Variant, keys):
  """Sweep variants in their experiment's order, then the others by their differing values."""
  first = variant.runs[0]
  index = first.variant_index if first.variant_index is not None else math.inf
  values = [(0, v, "") if is_number(v) else
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
      variant.name = describe(variant.runs[0].config, keys)
    elif len(labels) == 1 and None not in labels:
      variant.name = labels.pop()
    else:
      variant.name = describe(variant.runs[0].config, keys) or _common_folder(variant.runs)
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
      detail = describe(variant.runs[0].config, keys) or f"#{i + 1}"
      variant.name = f"{name} ({detail})"
