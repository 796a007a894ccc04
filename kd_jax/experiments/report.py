"""Readable summaries of many runs: a report over finished workdirs grouped into variants.

  python -m kd_jax.report runs/tau_m --out runs/tau_m/report
  python -m kd_jax.report 'runs/m*/seed*' runs/other_run --out /tmp/report --group-by teacher.ensemble_size

A report reads finished workdirs (config.json + results.json, metrics.jsonl for training curves),
groups the runs whose configs agree on everything but the seed into variants
(kd_jax/experiments/runs.py), and writes results.md, results.csv (one row per variant, mean and std
over seeds; a single seed has no std: 'nan', kd_jax/experiments/stats.py), runs.csv (one row per run)
and PNG plots (plots.py). Runs that differ in their distillation method (configs/benchmark/) also
get the methods benchmark's tables and plot (benchmark.py).
"""

import argparse
import csv
import os

from kd_jax import files
from kd_jax.errors import KdJaxError
from kd_jax.experiments import benchmark, cli
from kd_jax.experiments import plots as plots_lib
from kd_jax.experiments import runs as runs_lib
from kd_jax.experiments.stats import is_number, mean_std, mean_std_text
from kd_jax.results import flatten_results

# ---------------------------------------------------------------------------------------------------
# Tables


def _format_cell(values, metric) -> str:
  if metric.digits is not None:
    return mean_std_text(values, 100.0 if metric.percent else 1.0, metric.digits) or "-"
  if metric.percent:
    return mean_std_text(values, 100.0, 2) or "-"
  # Counts (parameters, FLOPs) and seconds read better in significant figures than in 4 decimals.
  return mean_std_text(values, 1.0, 4, metric in runs_lib.COMPRESSION_METRICS) or "-"


def markdown_table(variants, metrics) -> str:
  header = ["variant", "n"] + [metric.title for metric in metrics]
  rows = [[variant.name.replace("|", "\\|"), str(len(variant.runs))] +
          [_format_cell(variant.values(metric), metric) for metric in metrics]
          for variant in variants]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def write_csv(path: str, variants, metrics, config_keys) -> None:
  """One row per variant: its config values that set it apart, then mean and std of each metric
  (fractions, not percent; 'nan' where there is no value, or for the std of a single seed)."""
  with files.atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variant", "n", *config_keys] +
                    [f"{m.key}_{stat}" for m in metrics for stat in ("mean", "std")])
    for variant in variants:
      stats = [mean_std(variant.values(m)) for m in metrics]
      writer.writerow([variant.name, len(variant.runs),
                       *[runs_lib.format_value(variant.common(k)) for k in config_keys],
                       *[f"{x:.6g}" for pair in stats for x in pair]])


def write_runs_csv(path: str, variants) -> None:
  """One row per run with every number of its results.json, for analyses the report does not do."""
  rows = [(variant.name, run, flatten_results(run.results)) for variant in variants
          for run in variant.runs]
  columns = sorted({key for _, _, flat in rows for key, value in flat.items() if is_number(value)})
  with files.atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variant", "seed", "workdir", *columns])
    for name, run, flat in rows:
      writer.writerow([name, run.config.get("seed"), run.workdir] +
                      [f"{flat[c]:.6g}" if c in flat else "" for c in columns])


def _markdown_document(table: str, variants, images, methods_benchmark: bool = False) -> str:
  runs = sum(len(v.runs) for v in variants)
  lines = [
      "# Results", "",
      f"{len(variants)} variant(s), {runs} run(s). Cells are mean ± sample std over seeds (n runs); "
      "agreement and KL compare the student with the teacher ensemble at temperature 1, on the test "
      "set and in a clean (unaugmented) pass over the train set. Teacher accuracy is the ensemble's; "
      "single teacher accuracy averages its members.", "",
      table, "",
  ]
  if methods_benchmark:
    lines += [f"The methods benchmark's tables, per teacher -> student pair and method: "
              f"[{benchmark.TABLE_FILE}]({benchmark.TABLE_FILE}) ({benchmark.CSV_FILE}).", ""]
  duplicated = [(v, run) for v in variants for run in v.duplicates]
  if duplicated:
    lines += ["**Runs left out: same seed as a run already counted in their variant** (pooling them "
              "would report one result as n = 2 with std 0):", ""]
    lines += [f"- {v.name}: seed {run.config.get('seed')} again in {run.workdir}"
              for v, run in duplicated]
    lines.append("")
  lines += [f"![{name}]({name})" for name in images]
  lines += ["", "Runs:", ""]
  lines += [f"- {v.name}: " + ", ".join(run.workdir for run in v.runs) for v in variants]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Entry points

def write_report(paths, out_dir: str, group_by=None, plots: bool = True) -> str:
  """Writes results.md, results.csv, runs.csv and plots for the runs in `paths`; returns the table."""
  runs = [runs_lib.load_run(workdir) for workdir in runs_lib.find_workdirs(paths)]
  group_by = [key.strip() for key in group_by or () if key.strip()]
  unknown = [key for key in group_by if all(key not in run.config for run in runs)]
  if unknown:
    raise KdJaxError(f"--group-by key {unknown[0]!r} is in no run's config; use dotted config keys "
                     "as in config.json, e.g. teacher.ensemble_size.")
  variants = runs_lib.group_runs(runs, group_by)
  metrics = runs_lib.report_metrics(runs)
  table = markdown_table(variants, metrics)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise KdJaxError(f"--out {out_dir} is a file; give a folder for the report.")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise KdJaxError(f"cannot create --out {out_dir} ({e.strerror or e}); give a folder you can "
                     "write to.") from e
  config_keys = group_by or runs_lib.differing_keys([v.runs[0].config for v in variants])
  methods_benchmark = benchmark.is_benchmark(variants)
  try:
    write_csv(os.path.join(out_dir, "results.csv"), variants, metrics, config_keys)
    write_runs_csv(os.path.join(out_dir, "runs.csv"), variants)
    images = plots_lib.write_report_plots(variants, out_dir) if plots else []
    if methods_benchmark:
      images += [name for name in benchmark.write_benchmark(variants, out_dir, plots)
                 if name.endswith(".png")]
    files.write_text(os.path.join(out_dir, "results.md"),
                     _markdown_document(table, variants, images, methods_benchmark))
  except OSError as e:  # a full disk, a folder made read-only meanwhile (no file is half-written)
    raise KdJaxError(f"cannot write the report to {out_dir} ({e.strerror or e}); free disk space "
                     "or give another --out.") from e
  if methods_benchmark:
    return f"{table}\n\n{benchmark.markdown_document(variants)}"
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
  with cli.exit_statuses():
    table = write_report(args.workdirs, args.out, args.group_by.split(","), plots=not args.no_plots)
  print(table)
  print(f"\nwritten to {args.out}/")


if __name__ == "__main__":
  main()
