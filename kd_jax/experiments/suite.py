"""The reproduction suite: every experiment of a suite folder for several seeds in one resumable
command, then a verdict per claim the folder's claims.py states, computed from the runs.

  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --seeds=0,1,2
  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --dry-run
  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --report-only
  python -m kd_jax.reproduce --suite=configs/paper/small --table=docs/reproduction/runs.csv \
      --workdir=/tmp/from_table --report-only

Every `*.py` of the suite folder not starting with '_', apart from claims.py, is an experiment file
(VARIANTS and get_config(variant)); its runs go to <workdir>/<experiment>/<variant>/seed<k>. All
experiments are planned together, so runs of any experiment that would train the same teachers share
them (kd_jax/experiments/sweep.py). Rerunning the command skips finished runs and resumes an
interrupted one where it stopped. An experiment file may set MIN_SEEDS (e.g. 10, the paper's trials
of Table 1): its runs use --seeds extended by the next integers up to that many. Then it writes, per experiment, the usual report
(<workdir>/<experiment>/report/) and, over the whole suite, <workdir>/report/results.md with one row
per claim and one PNG per claim, and <workdir>/report/runs.csv: the compact table of every run's
figures that the claims read, with the checkout's commit (kd_jax/experiments/suite_table.py). With
--table, --report-only reads the verdicts' numbers from such a table instead of the runs.

claims.py defines get_claims(suite) -> [verdicts.Claim]: the checks of each claim over the cells of
`suite` (a verdicts.Suite: the runs of the workdir for the seeds). The verdict rule
(verdicts.VERDICT_RULE, printed in the report) compares per-seed statistics with a threshold by a
one-sided Student's t test at 95 %, or with a margin by two of them (equivalence). A run that has not finished or whose metric is not finite is named in the
report and never enters a number. A suite folder without claims.py gets its runs and reports, and no
verdicts.
"""

import argparse
import glob
import json
import os
import sys
import time

from kd_jax import files
from kd_jax.errors import KdJaxError
from kd_jax.experiments import cli, report, suite_table, sweep, verdicts
from kd_jax.experiments import plots as plots_lib

REPORT_DIR = sweep.REPORT_DIR  # <workdir>/report and <workdir>/<experiment>/report
CLAIMS_FILE = "claims.py"  # in the suite folder: get_claims(suite)
TIMES_FILE = "suite_times.jsonl"  # one line per run this command finished: name and seconds
TABLE_FILE = "runs.csv"  # in <workdir>/report: the compact table of the claims' figures


# ---------------------------------------------------------------------------------------------------
# The suite folder

def experiment_files(suite_dir: str) -> list:
  """The suite's experiment files, sorted: every *.py not starting with '_', except claims.py."""
  if not os.path.isdir(suite_dir):
    raise KdJaxError(f"--suite={suite_dir} is not a folder; use configs/paper/small.")
  found = sorted(path for path in glob.glob(os.path.join(suite_dir, "*.py"))
                 if not os.path.basename(path).startswith("_")
                 and os.path.basename(path) != CLAIMS_FILE)
  if not found:
    raise KdJaxError(f"--suite={suite_dir} holds no experiment file (*.py not starting with '_').")
  return found


def load_claims(suite_dir: str):
  """get_claims of the suite's claims.py, or None when the suite has no claims.py."""
  path = os.path.join(suite_dir, CLAIMS_FILE)
  if not os.path.isfile(path):
    return None
  module = cli.load_module(path, what="claims file")
  get_claims = getattr(module, "get_claims", None)
  if not callable(get_claims):
    raise KdJaxError(f"claims file {path} has no get_claims(suite); see "
                     "configs/paper/small/claims.py.")
  return get_claims


def experiment_seeds(module, seeds) -> list:
  """The seeds an experiment runs: `seeds`, extended by the integers after the largest one up to
  the experiment file's MIN_SEEDS (if it sets one)."""
  wanted = int(getattr(module, "MIN_SEEDS", 0) or 0)
  out = list(seeds)
  following = max(out) + 1
  while len(out) < wanted:
    out.append(following)
    following += 1
  return out


# ---------------------------------------------------------------------------------------------------
# The claims report

def _cell_text(cell: verdicts.Cell, percent: bool) -> str:
  text = verdicts.format_values(cell.array(), percent)
  if cell.problems:
    text += "; " + "; ".join(p for _, p in sorted(cell.problems.items()))
  return text


def claims_markdown(claim_list, seeds, images: dict, times: dict = None) -> str:
  lines = ["# Reproduction of Stanton et al. (2021) at laptop scale", "",
           f"Seeds: {', '.join(map(str, seeds))}. Verdict rule: {verdicts.VERDICT_RULE}", "",
           "| claim | paper | check | carries the claim | test | ours (mean ± std over seeds) | "
           "check verdict | claim verdict |",
           "|---|---|---|---|---|---:|---|---|"]
  for claim in claim_list:
    for i, check in enumerate(claim.checks):
      first = i == 0
      carries = "yes" if check.carries else "no (informative)"
      ours = check.ours()
      if check.statistic.problems:
        ours += "; " + "; ".join(sorted(set(check.statistic.problems.values())))
      lines.append(
          f"| {claim.key if first else ''} | {claim.paper if first else ''} | "
          f"{check.text} | {carries} | {check.test} | {ours} | {check.verdict} | "
          f"{'**' + claim.verdict + '**' if first else ''} |")
  for claim in claim_list:
    lines += ["", f"## {claim.key}: {claim.title}", "", f"Paper: {claim.paper}", "",
              f"Verdict: **{claim.verdict}**."]
    if claim.reduced_scale:
      lines.append(f"Its checks give **{claim.checks_verdict}**; sized down: {claim.reduced_scale}")
    if claim.problems():
      lines.append("Runs missing, unfinished or diverged (left out of every number): " +
                   "; ".join(claim.problems()) + ".")
    if claim.table:
      titles = list(claim.table[0][1])
      lines += ["", "| variant | " + " | ".join(titles) + " |",
                "|---|" + "---:|" * len(titles)]
      lines += ["| " + label + " | " + " | ".join(_cell_text(cells[t], t.endswith("%")) for t in titles) + " |"
                for label, cells in claim.table]
    if claim.key in images:
      lines += ["", f"![{claim.key}]({images[claim.key]})"]
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
    for record in files.read_jsonl(path):
      try:
        times[record["run"]] = float(record["seconds"])
      except (KeyError, TypeError, ValueError):
        continue
  return times


def write_claims_report(root: str, seeds, get_claims, out_dir: str = None,
                        plots: bool = True, suite: verdicts.Suite = None, commit: str = None) -> list:
  """Writes results.md and one PNG per claim of get_claims (a claims.py's) over the runs in `root`
  (or over `suite`, e.g. one read from a runs table) to out_dir (default <root>/report); returns the
  claims. Over the runs it also writes the runs table (TABLE_FILE) with `commit` (default: the
  checkout's)."""
  out_dir = out_dir or os.path.join(root, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  suite = suite or verdicts.Suite(root, seeds)
  from_runs = suite.rows is None
  claim_list = get_claims(suite)
  images = {}
  if plots:
    plt = plots_lib.pyplot()
    for claim in claim_list:
      name = f"{claim.key.lower()}.png"
      claim.plot(plt, os.path.join(out_dir, name))
      images[claim.key] = name
  files.write_text(os.path.join(out_dir, "results.md"),
                   claims_markdown(claim_list, seeds, images, read_times(root)))
  if from_runs:
    commit = commit or suite_table.checkout_commit(os.path.dirname(os.path.abspath(__file__)))
    suite_table.write_table(os.path.join(out_dir, TABLE_FILE), suite_table.table_rows(root, suite),
                            commit)
  return claim_list


# ---------------------------------------------------------------------------------------------------
# Running the suite

def run_suite(suite_dir: str, root: str, seeds, overrides=(), experiments_text: str = "",
              dry_run: bool = False, report_only: bool = False, table: str = ""):
  """Plans and runs (unless report_only) the suite's experiments, writes each one's report and the
  claims report; returns the claims (None for a dry run or a suite without claims.py). With
  `table` (report_only only), the claims read a runs table instead of the runs."""
  paths = experiment_files(suite_dir)
  get_claims = load_claims(suite_dir)
  if table:
    if not report_only:
      raise KdJaxError("--table reads a runs table instead of the runs: pass --report-only too.")
    if get_claims is None:
      raise KdJaxError(f"--table: {suite_dir} has no {CLAIMS_FILE}, so there is nothing to decide.")
    rows, commits = suite_table.read_table(table)
    claim_list = write_claims_report(root, seeds, get_claims,
                                     suite=verdicts.Suite(root, seeds, rows=rows))
    print(f"verdicts from {table} (runs of commit {', '.join(commits) or 'none'}):")
    for claim in claim_list:
      print(f"{claim.key}: {claim.verdict:12s} {claim.title}")
    print(f"\nclaims report written to {os.path.join(root, REPORT_DIR)}/results.md", flush=True)
    return claim_list
  modules = {os.path.splitext(os.path.basename(path))[0]: sweep.load_experiment(path)
             for path in paths}
  per_experiment = {name: experiment_seeds(module, seeds) for name, module in modules.items()}
  names = [os.path.splitext(os.path.basename(path))[0] for path in paths]
  if experiments_text:
    wanted = [n.strip() for n in experiments_text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
      raise KdJaxError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(names)}.")
    paths = [path for path, name in zip(paths, names) if name in wanted]
  if not report_only:
    experiments = [sweep.Experiment.load(path, os.path.join(root, name), prefix=f"{name}/")
                   for path, name in ((p, os.path.splitext(os.path.basename(p))[0]) for p in paths)]
    runs = sweep.plan_experiments(experiments, seeds, overrides, per_experiment)
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
  for path in paths:
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    try:
      report.write_report([folder], os.path.join(folder, REPORT_DIR))
    except KdJaxError as e:  # no finished run of this experiment yet
      print(f"note: no report for {name}: {e}", file=sys.stderr)
  if get_claims is None:
    print(f"note: {suite_dir} has no {CLAIMS_FILE}: no verdicts", file=sys.stderr)
    return None
  claim_list = write_claims_report(root, seeds, get_claims,
                                   suite=verdicts.Suite(root, seeds, per_experiment))
  for claim in claim_list:
    print(f"{claim.key}: {claim.verdict:12s} {claim.title}")
  print(f"\nclaims report written to {os.path.join(root, REPORT_DIR)}/results.md", flush=True)
  return claim_list


def main(argv=None) -> None:
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
  parser.add_argument("--table", default="",
                      help="with --report-only: verdicts from this runs table (e.g. "
                           "docs/reproduction/runs.csv) instead of the runs")
  start = time.time()
  with cli.exit_statuses(sweep.RESUME_DETAIL):
    overrides, rest = sweep.split_overrides(argv)
    args = parser.parse_args(rest)
    run_suite(args.suite, args.workdir, sweep.parse_seeds(args.seeds), overrides,
              args.experiments, args.dry_run, args.report_only, args.table)
  print(f"took {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
  main()
