"""Runs an experiment: each variant of an experiment file for each seed, one run after another, then
the report over all of them.

  python sweep.py --config=configs/paper/temperature_ensemble.py --workdir=runs/tau_m --seeds=0,1,2
  python sweep.py --config=configs/paper/temperature_ensemble.py --workdir=runs/tau_m --dry-run
  python sweep.py --config=... --workdir=... --variants=tau1_m1,tau4_m1 --config.student.epochs=30
  python sweep.py --config=... --workdir=... --report-only     # the report alone, over finished runs

An experiment file defines VARIANTS (a tuple of names) and get_config(variant). Every run gets the
variant's config, the --config.KEY=VALUE overrides (parsed as run.py parses them,
kd_jax/experiments/cli.py; unknown keys are an error) and its seed. Every run's config is validated
when the sweep plans it, before anything runs; the runs then execute one after another in this
process (the study code, and with it JAX, is imported only then: planning and --dry-run need
neither).

Layout of --workdir:
  <variant>/seed<k>/   a run's workdir (config.json, metrics.jsonl, checkpoints, results.json), plus
                       variant.json ({"experiment", "variant", "variant_index", "seed", ...}), which
                       names the run in reports. It is written once the run has finished, because the
                       study only starts in an empty folder (or one holding its config.json), and
                       again whenever a finished run is skipped.
  report/              results.md, results.csv, runs.csv and plots over every finished run in --workdir

Resuming: a run whose results.json parses is skipped; an unfinished one (or one whose results.json
is damaged) resumes where it stopped (the study's own resume). A run folder that holds a different
config stops the sweep before anything runs, as run.py would.

Teacher sharing: runs that would train the same teachers (equal seed, `data` and `teacher` sections
apart from teacher.ensemble_size, precision and ensemble_method) train them once. Teacher i depends
only on the seed and its index i, so an ensemble of m members is the first m members of any larger
one: the run with the largest ensemble of such a group (among those, one that has already started
training its own) trains them; the others set teacher.load_from to its workdir, load members
0..m-1 and run after it. Sharing changes no result. A run that has already started keeps the
teacher.load_from it started with. The reproduction suite (kd_jax/experiments/suite.py) plans the
experiments of a whole suite together, so teachers are shared across experiments too.
"""

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

import ml_collections

from kd_jax import config as config_lib
from kd_jax import files
from kd_jax import workdir as workdir_lib
from kd_jax.errors import DivergedError, KdJaxError
from kd_jax.experiments import cli, report
from kd_jax.experiments.runs import VARIANT_FILE

REPORT_DIR = "report"
RESUME_DETAIL = " (finished runs are skipped)"  # ends the line of an interrupted sweep
# Config sections and keys that determine the trained teachers (ensemble size apart: a smaller
# ensemble is the first members of a larger one).
TEACHER_KEYS = ("seed", "data", "teacher", "precision", "ensemble_method")


# ---------------------------------------------------------------------------------------------------
# Experiment files and overrides

def load_experiment(path: str):
  """Imports an experiment file and checks that it has VARIANTS and get_config(variant)."""
  if ":" in path:
    raise KdJaxError(f"--config={path}: pass the experiment file alone and pick variants with "
                     "--variants.")
  if not os.path.exists(path):  # (a folder: cli.load_module lists its files)
    raise KdJaxError(f"experiment file {path} does not exist; see configs/paper/.")
  module = cli.load_module(path, what="experiment file")
  variants = getattr(module, "VARIANTS", None)
  if not callable(getattr(module, "get_config", None)) or not isinstance(variants, (tuple, list)):
    raise KdJaxError(f"{path} is not an experiment file: it needs VARIANTS (a tuple of names) and "
                     "get_config(variant); for a single run use run.py.")
  for variant in variants:
    # Variant names become folder names next to report/.
    if (not isinstance(variant, str) or not variant or variant.startswith(".") or "/" in variant
        or os.sep in variant or variant == REPORT_DIR):
      raise KdJaxError(f"{path}: variant name {variant!r} cannot name a folder.")
  return module


def select_variants(module, text: str) -> list:
  """The variants named in --variants (all when empty), in the experiment's order."""
  if not text:
    return list(module.VARIANTS)
  wanted = [v.strip() for v in text.split(",") if v.strip()]
  unknown = [v for v in wanted if v not in module.VARIANTS]
  if unknown:
    raise KdJaxError(f"unknown variant {unknown[0]!r}; choose from {', '.join(module.VARIANTS)}.")
  return [v for v in module.VARIANTS if v in wanted]


def parse_seeds(text: str) -> list:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    seeds = []
  if not seeds or len(set(seeds)) != len(seeds):
    raise KdJaxError(f"--seeds={text!r}: give distinct integers separated by commas, e.g. 0,1,2.")
  return seeds


def split_overrides(argv) -> tuple:
  """Separates --config.KEY=VALUE arguments (as (KEY, VALUE) pairs) from the others, as run.py does
  (kd_jax/experiments/cli.py); the seed is the sweep's own."""
  overrides, rest = cli.split_overrides(argv)
  if any(key == "seed" for key, _ in overrides):
    raise KdJaxError("--config.seed: the sweep sets the seed of each run; use --seeds.")
  return overrides, rest


# ---------------------------------------------------------------------------------------------------
# Planning

@dataclasses.dataclass
class PlannedRun:
  variant: str
  seed: int
  config: ml_collections.ConfigDict
  workdir: str  # absolute
  done: bool = False  # results.json parses: skipped
  started: bool = False  # config.json exists
  provider: "PlannedRun" = None  # the run whose teachers this one loads
  diverged: str = None  # the error of a run that diverged (its diverged.json): skipped, flagged
  experiment: str = ""  # the experiment file's name, without .py
  config_file: str = ""
  variant_index: int = 0  # position in the experiment's VARIANTS (report order)
  prefix: str = ""  # the experiment's folder in a suite ('' for a single experiment)

  @property
  def name(self) -> str:
    return f"{self.prefix}{self.variant}/seed{self.seed}"


@dataclasses.dataclass
class Experiment:
  """One experiment file of a sweep or suite, and where its runs go."""
  name: str
  config_file: str
  module: object
  variants: list
  root: str  # runs go to <root>/<variant>/seed<k>
  prefix: str = ""  # shown before run names ('<experiment>/' in a suite)

  @classmethod
  def load(cls, config_file: str, root: str, variants_text: str = "", prefix: str = ""):
    module = load_experiment(config_file)
    return cls(name=os.path.splitext(os.path.basename(config_file))[0], config_file=config_file,
               module=module, variants=select_variants(module, variants_text), root=root,
               prefix=prefix)


def _teacher_identity(config) -> str:
  """What the teachers of a run depend on, apart from how many of them it uses."""
  values = workdir_lib.config_dict(config)
  values["teacher"].pop("load_from", None)
  values["teacher"].pop("ensemble_size", None)
  return json.dumps({key: values.get(key) for key in TEACHER_KEYS}, sort_keys=True)


def _adopt_saved_state(run: PlannedRun) -> None:
  """Marks a run started or done, keeping the teacher.load_from it started with; refuses a run folder
  that holds another config, before the sweep runs anything."""
  config_path = os.path.join(run.workdir, workdir_lib.CONFIG_FILE)
  if not os.path.isfile(config_path):
    if os.path.isdir(run.workdir) and os.listdir(run.workdir):
      raise KdJaxError(f"{run.workdir} is not empty and holds no kd_jax run; move it away.")
    return
  saved = workdir_lib.read_json(config_path, "the run's config")
  run.started = True
  run.done = workdir_lib.read_results(run.workdir) is not None  # damaged results: evaluated again
  run.diverged = None if run.done else workdir_lib.read_diverged(run.workdir)
  if not run.config.teacher.load_from:
    # Teachers the sweep shares: the run keeps the source it started with (a user's own
    # --config.teacher.load_from is compared like any other key).
    run.config.teacher.load_from = saved.get("teacher", {}).get("load_from", "")
  differences = workdir_lib.config_differences(saved, workdir_lib.config_dict(run.config))
  if differences:
    key, old, new = differences[0]
    raise KdJaxError(f"{run.workdir} holds a run of another config ({key}: {old!r} there, {new!r} "
                     "now); use the overrides it was started with, or another --workdir.")


def _share_teachers(runs) -> None:
  """Points each run that would retrain an earlier run's teachers at that run's workdir."""
  by_workdir = {run.workdir: run for run in runs}
  groups = {}
  for run in runs:
    if run.config.teacher.load_from:
      # Started earlier with shared teachers, or given teachers by the user.
      run.provider = by_workdir.get(os.path.abspath(run.config.teacher.load_from))
    else:
      groups.setdefault(_teacher_identity(run.config), []).append(run)
  for members in groups.values():
    # The largest ensemble holds every smaller one as its first members; among runs of that size,
    # one that has started training its own teachers keeps them and serves the others.
    largest = max(run.config.teacher.ensemble_size for run in members)
    candidates = [run for run in members if run.config.teacher.ensemble_size == largest]
    provider = next((run for run in candidates if run.started), candidates[0])
    for run in members:
      if run is not provider and not run.started:
        run.config.teacher.load_from = provider.workdir
        run.provider = provider


def _order(runs) -> list:
  """Keeps the given order, except that a run providing teachers moves before its first user."""
  position = {id(run): i for i, run in enumerate(runs)}
  first_use = dict(position)
  for run in runs:
    if run.provider is not None and id(run.provider) in first_use:
      first_use[id(run.provider)] = min(first_use[id(run.provider)], position[id(run)])
  return sorted(runs, key=lambda run: (first_use[id(run)], run.provider is not None))


def plan_experiments(experiments, seeds, overrides, experiment_seeds: dict = None) -> list:
  """The runs of `experiments`, seed by seed (so an interrupted sweep already has every variant of a
  seed once), with teachers shared across all of them and each run's saved state read.
  `experiment_seeds` ({experiment name: seeds}) replaces `seeds` for the experiments it names."""
  runs = []
  experiment_seeds = experiment_seeds or {}
  every_seed = sorted(set(seeds).union(*map(set, experiment_seeds.values())),
                      key=lambda s: (s not in seeds, s))
  for seed in every_seed:
    for experiment in experiments:
      if seed not in experiment_seeds.get(experiment.name, seeds):
        continue
      for variant in experiment.variants:
        # A copy: an experiment file may hand out one shared config object.
        config = copy.deepcopy(cli.call_get_config(
            experiment.module, experiment.module.__file__, variant, what="experiment file"))
        cli.apply_overrides(config, overrides)
        config.seed = seed
        config_lib.validate(config)  # once: the run executes this validated config
        if config.get("study", "kd") != "kd":
          raise KdJaxError(f"{experiment.config_file}:{variant} is a config.study={config.study!r} "
                           "run, which has no student to sweep or report; run it with run.py.")
        run = PlannedRun(
            variant=variant, seed=seed, config=config,
            workdir=os.path.abspath(os.path.join(experiment.root, variant, f"seed{seed}")),
            experiment=experiment.name, config_file=experiment.config_file,
            variant_index=list(experiment.module.VARIANTS).index(variant),
            prefix=experiment.prefix)
        _adopt_saved_state(run)
        runs.append(run)
  _share_teachers(runs)
  return _order(runs)


def describe(run: PlannedRun) -> str:
  if run.done:
    return "finished: skipped"
  if run.diverged:
    return "diverged earlier: skipped (delete its folder to try again)"
  if run.provider is not None:
    return f"teachers from {run.provider.name}"
  if run.config.teacher.load_from:
    return f"teachers from {run.config.teacher.load_from}"
  return "trains its teachers"


# ---------------------------------------------------------------------------------------------------
# Running

def write_variant_file(run: PlannedRun, overrides) -> None:
  label = {"experiment": run.experiment, "variant": run.variant, "variant_index": run.variant_index,
           "seed": run.seed, "config_file": run.config_file,
           "overrides": [f"--config.{k}={v}" for k, v in overrides],
           "teachers_from": run.config.teacher.load_from or None}
  files.write_json(os.path.join(run.workdir, VARIANT_FILE), label)


def _execute_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs one planned study (its config validated when planned) in `workdir`.

  The one place the sweep reaches the study code, imported here: JAX and the models load only once
  a sweep runs something, never for planning or a dry run.
  """
  from kd_jax import study  # pylint: disable=g-import-not-at-top
  study.execute(config, workdir)


def execute(runs, overrides=(), dry_run: bool = False, on_finished=None) -> None:
  """Runs the planned runs in order (a finished one is skipped), labelling each with variant.json;
  with dry_run, lists them. on_finished(run, seconds) is called after each run this call ran."""
  total = len(runs)
  if dry_run:
    for i, run in enumerate(runs, 1):
      print(f"  [{i}/{total}] {run.name}: {describe(run)}")
    return
  for i, run in enumerate(runs, 1):
    print(f"\n=== [{i}/{total}] {run.name}: {describe(run)}", flush=True)
    if not run.done and not run.diverged:
      start = time.time()
      try:
        _execute_run(run.config, run.workdir)
        run.done = True
      except DivergedError as e:
        # A diverged run is an outcome of its config (e.g. a learning rate too high): the sweep
        # goes on with the others and flags it at the end.
        run.diverged = str(e)
        print(f"run {run.name} diverged: {e}", file=sys.stderr, flush=True)
      except KdJaxError as e:
        raise type(e)(f"run {run.name}: {e}") from e
      if run.done and on_finished is not None:
        on_finished(run, time.time() - start)
    if os.path.isdir(run.workdir):
      write_variant_file(run, overrides)


def report_only(config_file: str, root: str) -> None:
  """The sweep's report over the finished runs in `root`, running nothing (the experiment file is
  only checked: it is not asked for configs)."""
  load_experiment(config_file)
  out = os.path.join(root, REPORT_DIR)
  print(f"=== report over the finished runs in {root}", flush=True)
  print(report.write_report([root], out))
  print(f"\nreport written to {out}/", flush=True)


def run_sweep(config_file: str, root: str, seeds, variants_text: str = "", overrides=(),
              dry_run: bool = False) -> list:
  """Plans, runs (unless dry_run) and reports the sweep; returns the planned runs."""
  experiment = Experiment.load(config_file, root, variants_text)
  runs = plan_experiments([experiment], seeds, overrides)
  total = len(runs)
  print(f"sweep {experiment.name}: {len(experiment.variants)} variant(s) x {len(seeds)} seed(s) = "
        f"{total} runs in {root}", flush=True)
  execute(runs, overrides, dry_run)
  if dry_run:
    return runs

  out = os.path.join(root, REPORT_DIR)
  diverged = [run for run in runs if run.diverged]
  if len(diverged) < total:
    print(f"\n=== report over the finished runs in {root}", flush=True)
    print(report.write_report([root], out))
    print(f"\nreport written to {out}/", flush=True)
  if diverged:
    raise DivergedError(f"{len(diverged)} of {total} runs diverged ("
                        f"{', '.join(run.name for run in diverged)}); each workdir's "
                        f"{workdir_lib.DIVERGED_FILE} says where.")
  return runs


def main(argv) -> None:
  """`python sweep.py ...`: argv without the program name; exit statuses as in cli.exit_statuses."""
  parser = argparse.ArgumentParser(
      prog="sweep.py", description="Runs every variant of an experiment file for several seeds.",
      epilog="Any --config.KEY=VALUE argument overrides that key in every run.")
  parser.add_argument("--config", required=True, help="experiment file, e.g. configs/paper/x.py")
  parser.add_argument("--workdir", required=True, help="folder for the runs and report/")
  parser.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
  parser.add_argument("--variants", default="", help="a subset of VARIANTS, comma-separated")
  parser.add_argument("--dry-run", action="store_true", help="list the planned runs and stop")
  parser.add_argument("--report-only", action="store_true",
                      help="write the report over the finished runs in --workdir and stop")
  with cli.exit_statuses(RESUME_DETAIL):
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    if args.report_only:
      report_only(args.config, args.workdir)
      return
    run_sweep(args.config, args.workdir, parse_seeds(args.seeds), args.variants, overrides,
              args.dry_run)
