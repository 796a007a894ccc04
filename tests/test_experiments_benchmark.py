"""The methods benchmark's report (kd_jax/experiments/benchmark.py) on synthetic workdirs: rows per
pair and method, cells recomputed from the results files, the papers' grid, the CSV and the plot."""

import json
import os

import numpy as np
import pytest

from kd_jax.experiments import benchmark, report, sweep
from test_experiments_report import PNG_SIGNATURE, fake_results, read_csv, write_run

PAIRS = (("resnet56", "resnet20"), ("vgg13", "vgg8"))
METHODS = ("ce", "kd", "dkd")


def _benchmark_results(rng, cka=True):
  extra = {"best_test_accuracy": float(rng.uniform(0.76, 0.8)),
           "best_test_accuracy_step": 100, "best_test_accuracy_epoch": float(rng.integers(1, 9)),
           "best_test_agreement": float(rng.uniform(0.7, 0.8)), "test_evaluations": 8,
           "last_test_accuracy": 0.7, "last_epoch": 8.0}
  if cka:
    extra.update(cka_stage1=float(rng.uniform(0.5, 0.9)), cka_stage2=float(rng.uniform(0.5, 0.9)))
  results = fake_results(rng, 1, extra=extra)
  results["student"]["last_test_accuracy"] = results["student"]["test_accuracy"]
  return results


def _method_config(method):
  if method == "ce":
    return {"distill__method": "paper", "distill__alpha": 1.0}
  return {"distill__method": method}


@pytest.fixture
def benchmark_runs(tmp_path):
  """2 pairs x 3 methods x 3 seeds, as a sweep of configs/benchmark/ leaves them."""
  rng = np.random.default_rng(7)
  index = 0
  for teacher, student in PAIRS:
    for method in METHODS:
      name = f"{teacher}-{student}-{method}"
      for seed in range(3):
        write_run(tmp_path / "runs" / name / f"seed{seed}", seed=seed, m=1,
                  results=_benchmark_results(rng, cka=teacher == "resnet56"),
                  variant={"experiment": "cifar100", "variant": name, "variant_index": index},
                  teacher__model__name=teacher, student__model__name=student,
                  **_method_config(method))
      index += 1
  return tmp_path


def _results(root, name, seed):
  with open(root / "runs" / name / f"seed{seed}" / "results.json") as f:
    return json.load(f)


def test_rows_are_pairs_and_methods_with_cells_from_the_results(benchmark_runs):
  root = benchmark_runs
  table = report.write_report([str(root / "runs")], str(root / "out"))
  rows = read_csv(root / "out" / "benchmark.csv")
  assert [(r["pair"], r["method"], r["n"]) for r in rows] == [
      (f"{t} -> {s}", m, "3") for t, s in PAIRS for m in METHODS]
  # One cell recomputed from the three runs' results.json: vgg13 -> vgg8, dkd, best-epoch top-1.
  best = [_results(root, "vgg13-vgg8-dkd", s)["student"]["best_test_accuracy"] for s in range(3)]
  row = next(r for r in rows if r["pair"] == "vgg13 -> vgg8" and r["method"] == "dkd")
  assert float(row["student_best_test_accuracy_mean"]) == pytest.approx(np.mean(best), rel=1e-5)
  assert float(row["student_best_test_accuracy_std"]) == pytest.approx(np.std(best, ddof=1),
                                                                       rel=1e-5)
  document = (root / "out" / "benchmark.md").read_text()
  cell = f"{100 * np.mean(best):.2f} ± {100 * np.std(best, ddof=1):.2f}"
  dkd_line = next(line for line in document.split("### vgg13 -> vgg8")[1].splitlines()
                  if line.startswith("| dkd |"))
  assert cell in dkd_line
  assert "top-1 % (last epoch)" in document and "top-1 % (best epoch)" in document
  assert document in table  # sweep.py and kd_jax.report print it after the variants' table
  assert "[benchmark.md](benchmark.md)" in (root / "out" / "results.md").read_text()


def test_last_epoch_kl_nll_ece_and_cka_columns(benchmark_runs):
  root = benchmark_runs
  report.write_report([str(root / "runs")], str(root / "out"), plots=False)
  row = next(r for r in read_csv(root / "out" / "benchmark.csv")
             if r["pair"] == "resnet56 -> resnet20" and r["method"] == "ce")
  for key, column in (("test_accuracy", "student_test_accuracy"), ("test_kl", "test_kl"),
                      ("test_nll", "student_test_nll"), ("test_ece", "student_test_ece"),
                      ("train_agreement", "train_agreement"), ("cka_stage2", "student_cka_stage2")):
    values = [_results(root, "resnet56-resnet20-ce", s)["student"][key] for s in range(3)]
    assert float(row[f"{column}_mean"]) == pytest.approx(np.mean(values), rel=1e-5), key
  document = (root / "out" / "benchmark.md").read_text()
  vgg = document.split("### vgg13 -> vgg8")[1].split("##")[0]
  assert "| CKA stage1 |" in document.split("### vgg13 -> vgg8")[0]
  # vgg13 -> vgg8 recorded no CKA: its cells say so.
  assert all(line.rstrip(" |").endswith("| - | -") for line in vgg.splitlines()
             if line.startswith(("| ce", "| kd", "| dkd")))


def test_the_papers_grid_of_pairs_and_methods(benchmark_runs):
  root = benchmark_runs
  report.write_report([str(root / "runs")], str(root / "out"), plots=False)
  document = (root / "out" / "benchmark.md").read_text()
  grid = document.split("## top-1 % (best epoch), by pair and method")[1].split("##")[0]
  lines = [line for line in grid.splitlines() if line.startswith("|")]
  assert lines[0] == "| teacher -> student | ce | kd | dkd |"
  kd = [_results(root, "resnet56-resnet20-kd", s)["student"]["best_test_accuracy"]
        for s in range(3)]
  assert lines[2].split(" | ")[2] == f"{100 * np.mean(kd):.2f} ± {100 * np.std(kd, ddof=1):.2f}"


def test_the_agreement_vs_accuracy_plot_has_a_point_per_method_and_pair(benchmark_runs):
  root = benchmark_runs
  report.write_report([str(root / "runs")], str(root / "out"))
  with open(root / "out" / benchmark.PLOT_FILE, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  variants = [v for v in report.runs_lib.group_runs(
      [report.runs_lib.load_run(w) for w in report.runs_lib.find_workdirs([str(root / "runs")])])]
  points = benchmark.plot_points(variants)
  assert [(p[0], p[1]) for p in points] == [(m, f"{t} -> {s}") for t, s in PAIRS for m in METHODS]
  accuracy = [_results(root, "vgg13-vgg8-kd", s)["student"]["test_accuracy"] for s in range(3)]
  point = next(p for p in points if p[:2] == ("kd", "vgg13 -> vgg8"))
  assert point[2] == pytest.approx((100 * np.mean(accuracy), 100 * np.std(accuracy, ddof=1)))
  assert f"![{benchmark.PLOT_FILE}]({benchmark.PLOT_FILE})" in (
      root / "out" / "results.md").read_text()


def test_runs_of_one_method_get_no_benchmark_files(tmp_path):
  for seed in range(2):
    write_run(tmp_path / f"s{seed}", seed=seed, temperature=1.0)
  report.write_report([str(tmp_path / "s*")], str(tmp_path / "out"))
  assert not any(name.startswith(("benchmark", "method_")) for name in os.listdir(tmp_path / "out"))


def test_method_labels():
  assert benchmark.method_label({"distill.method": "paper", "distill.alpha": 1.0}) == "ce"
  assert benchmark.method_label({"distill.method": "paper", "distill.alpha": 0.0}) == "paper"
  assert benchmark.method_label({"distill.method": "dkd"}) == "dkd"


def test_sweep_report_only_writes_the_report_over_finished_runs(benchmark_runs, capsys):
  root = benchmark_runs / "runs"
  experiment = root / "experiment.py"
  experiment.write_text("VARIANTS = ('a',)\n\ndef get_config(variant):\n  raise ValueError\n")
  sweep.main([f"--config={experiment}", f"--workdir={root}", "--report-only"])
  assert (root / "report" / "benchmark.md").is_file()
  assert "### vgg13 -> vgg8" in capsys.readouterr().out
