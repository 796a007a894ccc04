"""The multi-run report (kd_jax/experiments/report.py, runs.py, stats.py, plots.py) on synthetic
workdirs: grouping into variants, statistics, files and plots."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from kd_jax import KdJaxError
from kd_jax import config as kd_config
from kd_jax.experiments import plots, report, runs, stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_results(rng, m, extra=None):
  """A results.json of m teachers with plausible random numbers."""
  def entry(base):
    return {f"{split}_{k}": float(v) for split in ("test", "train")
            for k, v in (("accuracy", base + rng.uniform(0, .05)), ("nll", rng.uniform(.8, 1.2)),
                         ("ece", rng.uniform(.01, .05)))}
  student = entry(0.7)
  student.update({f"{split}_{k}": float(rng.uniform(lo, hi)) for split in ("test", "train")
                  for k, lo, hi in (("agreement", .75, .9), ("kl", .1, .4))})
  student.update(extra or {})
  return {"teachers": [entry(0.68) for _ in range(m)], "ensemble": entry(0.72), "student": student}


def write_run(workdir, *, seed=0, temperature=4.0, m=3, results=None, variant=None, steps=(4, 8),
              **config_changes):
  """A finished workdir as kd_jax.study.run leaves it (config.json, metrics.jsonl, results.json)."""
  config = kd_config.default_config()
  config.seed, config.distill.temperature, config.teacher.ensemble_size = seed, temperature, m
  for key, value in config_changes.items():
    section, _, field = key.replace("__", ".").rpartition(".")
    (config[section] if section else config)[field] = value
  rng = np.random.default_rng([seed, int(temperature), m])
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(sort_keys=True))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"event": "start"}) + "\n")
    for step in steps:
      f.write(json.dumps({"phase": "student", "step": step, "loss": temperature ** 2 / step,
                          "agreement": 0.5 + step / 100, "kl": 0.1}) + "\n")
  if results is not False:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results or fake_results(rng, m), f)
  if variant:
    with open(os.path.join(workdir, "variant.json"), "w") as f:
      json.dump(variant, f)
  return str(workdir)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture
def grid(tmp_path):
  """2 temperatures x 2 ensemble sizes x 3 seeds, with operational keys varying between seeds."""
  for tau in (1.0, 4.0):
    for m in (1, 3):
      for seed in range(3):
        write_run(tmp_path / "runs" / f"t{tau:g}_m{m}_s{seed}", seed=seed, temperature=tau, m=m,
                  log_every_steps=10 + seed, teacher__load_from=f"/elsewhere/{seed}")
  return tmp_path


def test_variants_pool_seeds_and_are_named_by_the_keys_that_differ(grid):
  table = report.write_report([str(grid / "runs")], str(grid / "out"), plots=False)
  rows = read_csv(grid / "out" / "results.csv")
  names = [row["variant"] for row in rows]
  assert names == [f"distill.temperature={t}, teacher.ensemble_size={m}"
                   for t in (1, 4) for m in (1, 3)]
  assert all(row["n"] == "3" for row in rows)
  assert all(name in table for name in names)

  # Mean and sample std over seeds, recomputed from the results files.
  accuracies = [json.load(open(grid / "runs" / f"t4_m3_s{s}" / "results.json"))
                ["student"]["test_accuracy"] for s in range(3)]
  row = rows[names.index("distill.temperature=4, teacher.ensemble_size=3")]
  assert float(row["student_test_accuracy_mean"]) == pytest.approx(np.mean(accuracies), rel=1e-5)
  assert float(row["student_test_accuracy_std"]) == pytest.approx(np.std(accuracies, ddof=1),
                                                                  rel=1e-5)
  assert f"{100 * np.mean(accuracies):.2f} ± {100 * np.std(accuracies, ddof=1):.2f}" in table
  assert len(read_csv(grid / "out" / "runs.csv")) == 12


def test_report_files_and_plots(grid):
  report.write_report([str(grid / "runs")], str(grid / "out"))
  names = sorted(os.listdir(grid / "out"))
  assert names == ["agreement_vs_accuracy.png", "agreement_vs_ensemble_size.png", "results.csv",
                   "results.md", "runs.csv", "train_vs_test_agreement.png", "training_curves.png"]
  for name in names:
    if name.endswith(".png"):
      with open(grid / "out" / name, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
  document = (grid / "out" / "results.md").read_text()
  assert "| variant | n |" in document and "![training_curves.png](training_curves.png)" in document


def test_ensemble_size_plot_only_when_m_varies(tmp_path):
  for seed in range(2):
    write_run(tmp_path / f"t1_s{seed}", seed=seed, temperature=1.0)
    write_run(tmp_path / f"t4_s{seed}", seed=seed, temperature=4.0)
  report.write_report([str(tmp_path / "t*")], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "agreement_vs_ensemble_size.png")
  assert os.path.exists(tmp_path / "out" / "agreement_vs_accuracy.png")


def test_group_by_pools_and_names_by_its_keys(grid):
  report.write_report([str(grid / "runs")], str(grid / "out"), group_by=["teacher.ensemble_size"],
                      plots=False)
  rows = read_csv(grid / "out" / "results.csv")
  assert [(row["variant"], row["n"]) for row in rows] == [("teacher.ensemble_size=1", "6"),
                                                          ("teacher.ensemble_size=3", "6")]
  with pytest.raises(KdJaxError, match="teacher.ensemble_sise"):
    report.write_report([str(grid / "runs")], str(grid / "out2"), group_by=["teacher.ensemble_sise"])


def test_sweep_names_from_variant_json_in_the_experiments_order(tmp_path):
  for index, (name, tau) in enumerate((("tau4", 4.0), ("tau1", 1.0))):
    write_run(tmp_path / name / "seed0", temperature=tau,
              variant={"experiment": "temperature", "variant": name, "variant_index": index})
  report.write_report([str(tmp_path)], str(tmp_path / "out"), plots=False)
  assert [row["variant"] for row in read_csv(tmp_path / "out" / "results.csv")] == ["tau4", "tau1"]


def test_unknown_numeric_student_results_get_their_own_columns(tmp_path):
  rng = np.random.default_rng(0)
  results = fake_results(rng, 3, extra={"augmented_agreement": 0.8, "cka_stage1": 0.5,
                                        "note": "text is ignored"})
  write_run(tmp_path / "a", results=results)
  table = report.write_report([str(tmp_path / "a")], str(tmp_path / "out"), plots=False)
  assert "student augmented_agreement %" in table and "80.00" in table
  assert "student cka_stage1" in table and "0.5000" in table and "note" not in table
  row = read_csv(tmp_path / "out" / "results.csv")[0]
  assert row["variant"] == "a" and float(row["student_cka_stage1_mean"]) == 0.5


def test_training_records_keep_the_last_record_of_a_repeated_step(tmp_path):
  workdir = write_run(tmp_path / "a", steps=(4, 8, 4, 8, 12))  # resumed from step 0 once
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"phase": "student", "step": 12, "loss": 0.5, "agreement": 0.9}) + "\n")
    f.write(json.dumps({"phase": "student", "step": 13, "compile_s": 1.0}) + "\n")
    f.write('{"phase": "stud')  # cut short by a kill
  records = runs.training_records(workdir)
  assert [r["step"] for r in records] == [4, 8, 12]
  assert records[-1]["loss"] == 0.5


def test_unfinished_runs_are_skipped_and_missing_paths_refused(tmp_path, capsys):
  write_run(tmp_path / "done")
  write_run(tmp_path / "running", results=False)
  report.write_report([str(tmp_path)], str(tmp_path / "out"), plots=False)
  assert "running" in capsys.readouterr().err
  assert len(read_csv(tmp_path / "out" / "runs.csv")) == 1
  with pytest.raises(KdJaxError, match="nowhere"):
    report.write_report([str(tmp_path / "nowhere")], str(tmp_path / "out"))


def test_cli_prints_the_table_and_fails_in_one_line_without_runs(grid, tmp_path):
  def cli(*args):
    return subprocess.run([sys.executable, "-m", "kd_jax.report", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)

  done = cli(str(grid / "runs" / "t1*"), "--out", str(tmp_path / "out"), "--no-plots")
  assert done.returncode == 0, done.stderr
  assert "| teacher.ensemble_size=1 | 3 |" in done.stdout
  (tmp_path / "empty").mkdir()
  failed = cli(str(tmp_path / "empty"), "--out", str(tmp_path / "out2"))
  assert failed.returncode == 2
  assert failed.stderr.strip().startswith("error: no finished run")
  assert len(failed.stderr.strip().splitlines()) == 1


def test_same_variant_name_with_other_configs_is_told_apart(tmp_path):
  label = {"experiment": "temperature", "variant": "base", "variant_index": 0}
  write_run(tmp_path / "a", temperature=1.0, variant=label)
  write_run(tmp_path / "b", temperature=4.0, variant=label)
  report.write_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"),
                      plots=False)
  assert [row["variant"] for row in read_csv(tmp_path / "out" / "results.csv")] == [
      "base (distill.temperature=1)", "base (distill.temperature=4)"]


def test_ignored_keys_cover_the_workdirs_operational_keys():
  from kd_jax import workdir
  assert set(workdir.OPERATIONAL_KEYS) <= set(runs.IGNORED_KEYS)


# ---------------------------------------------------------------------------------------------------
# What a newcomer found: one-point curves, Fig. 6's plot, long legends, repeated seeds

class _CapturingPyplot:
  """matplotlib.pyplot, except that close() keeps the figure for inspection."""

  def __init__(self):
    self.figures = []
    self._plt = plots.pyplot()

  def __getattr__(self, name):
    return getattr(self._plt, name)

  def close(self, fig):
    self.figures.append(fig)


def test_training_curves_of_runs_that_logged_one_point_are_visible(tmp_path):
  write_run(tmp_path / "a", steps=(4,))
  variants = runs.group_runs([runs.load_run(str(tmp_path / "a"))])
  plt = _CapturingPyplot()
  assert plots.plot_training_curves(plt, variants, str(tmp_path / "curves.png"))
  loss_axes, agreement_axes = plt.figures[0].axes[:2]
  for ax in (loss_axes, agreement_axes):
    (line,) = ax.get_lines()
    assert len(line.get_xdata()) == 1
    # A one-point line without a marker draws nothing: empty axes.
    assert line.get_marker() not in (None, "None", "", " ")
  plt._plt.close("all")


def test_init_interpolation_sweep_gets_a_train_agreement_vs_lambda_plot(tmp_path):
  for lam in (0.0, 0.5, 1.0):
    for seed in range(2):
      write_run(tmp_path / f"lam{lam}_s{seed}", seed=seed, student__init="interpolate",
                student__init_lambda=lam)
  report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert (tmp_path / "out" / "agreement_vs_init_lambda.png").read_bytes()[:8] == PNG_SIGNATURE
  assert not (tmp_path / "out" / "agreement_vs_student_epochs.png").exists()
  assert "agreement_vs_init_lambda.png" in (tmp_path / "out" / "results.md").read_text()
  variants = runs.group_runs([runs.load_run(str(p)) for p in sorted(tmp_path.glob("lam*"))])
  plt = _CapturingPyplot()
  assert plots.plot_against_key(plt, variants, "student.init_lambda", str(tmp_path / "x.png"),
                                xlabel="lambda", title="t")
  train_line = plt.figures[0].axes[0].get_lines()[0]
  assert list(train_line.get_xdata()) == [0.0, 0.5, 1.0]
  expected = [100 * np.mean([json.load(open(tmp_path / f"lam{lam}_s{s}" / "results.json"))
                             ["student"]["train_agreement"] for s in range(2)])
              for lam in (0.0, 0.5, 1.0)]
  np.testing.assert_allclose(train_line.get_ydata(), expected, rtol=1e-6)
  plt._plt.close("all")


def test_long_variant_names_do_not_squash_the_plots(tmp_path):
  """Variants told apart by long config values: the legend must not widen the figure several-fold."""
  import matplotlib.image
  for i in range(4):
    write_run(tmp_path / f"v{i}", m=1 + i, data__path=f"/data/{i}/" + "a-very-long-folder-name/" * 8,
              data__name=f"dataset-with-a-long-name-{i}" * 3)
  report.write_report([str(tmp_path / "v*")], str(tmp_path / "out"))
  for name in ("agreement_vs_accuracy.png", "agreement_vs_ensemble_size.png",
               "training_curves.png"):
    height, width = matplotlib.image.imread(tmp_path / "out" / name).shape[:2]
    # The axes alone are 7-12 inches at 120 dpi; a legend of 40-character lines adds about 3.
    assert width < 1900, (name, width)


def test_two_runs_of_one_seed_are_not_pooled_and_are_flagged(tmp_path):
  write_run(tmp_path / "a" / "seed0", seed=0)
  write_run(tmp_path / "copy" / "seed0", seed=0)  # the same run, twice
  write_run(tmp_path / "a" / "seed1", seed=1)
  report.write_report([str(tmp_path)], str(tmp_path / "out"), plots=False)
  (row,) = read_csv(tmp_path / "out" / "results.csv")
  assert row["n"] == "2"
  accuracies = [json.load(open(tmp_path / "a" / f"seed{s}" / "results.json"))["student"]
                ["test_accuracy"] for s in (0, 1)]
  assert float(row["student_test_accuracy_std"]) == pytest.approx(np.std(accuracies, ddof=1),
                                                                  rel=1e-5)
  document = (tmp_path / "out" / "results.md").read_text()
  assert "same seed as a run already counted" in document
  assert f"seed 0 again in {tmp_path / 'copy' / 'seed0'}" in document
  assert len(read_csv(tmp_path / "out" / "runs.csv")) == 2


def test_one_seed_twice_is_n_1_not_n_2_with_std_0(tmp_path):
  write_run(tmp_path / "a", seed=3)
  write_run(tmp_path / "b", seed=3)
  report.write_report([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"),
                      plots=False)
  (row,) = read_csv(tmp_path / "out" / "results.csv")
  assert row["n"] == "1"


# ---------------------------------------------------------------------------------------------------
# One definition of a variant's spread, one ensemble-size plot

def test_a_single_seed_has_no_std_in_tables_and_files(tmp_path):
  write_run(tmp_path / "a", seed=0)
  table = report.write_report([str(tmp_path / "a")], str(tmp_path / "out"), plots=False)
  (row,) = read_csv(tmp_path / "out" / "results.csv")
  accuracy = json.load(open(tmp_path / "a" / "results.json"))["student"]["test_accuracy"]
  assert float(row["student_test_accuracy_mean"]) == pytest.approx(accuracy, rel=1e-5)
  assert row["student_test_accuracy_std"] == "nan"
  assert f"| {100 * accuracy:.2f} |" in table and "±" not in table


def test_mean_std_over_seeds():
  assert stats.mean_std([0.5, 0.7]) == (pytest.approx(0.6),
                                        pytest.approx(np.std([0.5, 0.7], ddof=1)))
  mean, std = stats.mean_std([0.5])
  assert mean == 0.5 and np.isnan(std)
  assert all(np.isnan(x) for x in stats.mean_std([]))
  assert stats.mean_std_text([0.5, 0.7], 100, 2) == "60.00 ± 14.14"
  assert stats.mean_std_text([0.5], 100, 2) == "50.00" and stats.mean_std_text([], 100, 2) == ""
  assert stats.error_bar([0.5]) == (50.0, 0.0)  # no spread: no error bar


def test_ensemble_size_plot_shows_the_mean_over_seeds_per_m(grid):
  variants = runs.group_runs([runs.load_run(w) for w in runs.find_workdirs([str(grid / "runs")])])
  plt = _CapturingPyplot()
  assert plots.plot_ensemble_size(plt, variants, str(grid / "m.png"))
  left, right = plt.figures[0].axes[:2]
  by_label = {bars.get_label(): bars.lines[0] for bars in left.containers + right.containers}
  assert sorted(by_label) == sorted(f"distill.temperature={t}: {name}" for t in (1, 4) for name in
                                    ("test agreement", "student", "teacher ensemble"))
  line = by_label["distill.temperature=4: test agreement"]
  assert list(line.get_xdata()) == [1, 3]
  expected = [100 * np.mean([json.load(open(grid / "runs" / f"t4_m{m}_s{s}" / "results.json"))
                             ["student"]["test_agreement"] for s in range(3)]) for m in (1, 3)]
  np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-6)
  plt._plt.close("all")


def _with_compression(results, student_flops, student_params):
  figures = lambda flops, params: {"params": params, "flops_per_image": flops,  # noqa: E731
                                   "latency_batch1_s": 1e-4}
  results["compression"] = {
      "teachers": [figures(3e6, 300) for _ in results["teachers"]],
      "ensemble": figures(9e6, 900), "student": figures(student_flops, student_params),
      "student_vs_ensemble": {"params": student_params / 900, "flops_per_image": student_flops / 9e6,
                              "accuracy_kept": results["student"]["test_accuracy"] / 0.72}}
  return results


def test_compression_columns_and_the_accuracy_against_flops_plot(tmp_path):
  rng = np.random.default_rng(0)
  for name, flops, params in (("small", 1e6, 100), ("large", 2e6, 200)):
    for seed in range(2):
      write_run(tmp_path / "runs" / f"{name}{seed}", seed=seed, variant={"variant": name},
                results=_with_compression(fake_results(rng, 3), flops, params))
  report.write_report([str(tmp_path / "runs")], str(tmp_path / "out"))
  rows = {row["variant"]: row for row in read_csv(tmp_path / "out" / "results.csv")}
  assert float(rows["small"]["student_flops_per_image_mean"]) == 1e6
  assert float(rows["large"]["student_params_mean"]) == 200
  assert float(rows["large"]["teacher_flops_per_image_mean"]) == 3e6  # teachers.0 of the list
  assert abs(float(rows["small"]["student_vs_ensemble_params_mean"]) - 100 / 900) < 1e-6  # %g
  assert "accuracy_vs_flops.png" in os.listdir(tmp_path / "out")
  assert "student FLOPs/img" in (tmp_path / "out" / "results.md").read_text()


def test_runs_without_compression_have_neither_its_columns_nor_its_plot(grid):
  report.write_report([str(grid / "runs")], str(grid / "out"))
  assert "accuracy_vs_flops.png" not in os.listdir(grid / "out")
  assert "FLOPs" not in (grid / "out" / "results.md").read_text()


# ---------------------------------------------------------------------------------------------------
# Best and last epoch


def _best_epoch_fields(rng):
  best = float(rng.uniform(0.75, 0.8))
  return {"best_test_accuracy": best, "best_test_accuracy_step": 450,
          "best_test_accuracy_epoch": float(rng.integers(1, 9)), "best_test_agreement": 0.8,
          "test_evaluations": 8, "last_test_accuracy": 0.7, "last_epoch": 8.0}


def test_best_epoch_columns_beside_the_last_epochs_accuracy(tmp_path):
  rng = np.random.default_rng(3)
  best = []
  for seed in range(3):
    fields = _best_epoch_fields(rng)
    best.append(fields["best_test_accuracy"])
    write_run(tmp_path / f"s{seed}", seed=seed, results=fake_results(rng, 3, extra=fields))
  table = report.write_report([str(tmp_path / "s*")], str(tmp_path / "out"), plots=False)
  header = table.splitlines()[0]
  assert "student acc % (last epoch)" in header and "student acc % (best epoch)" in header
  assert "best epoch" in header and "test agree % at best epoch" in header
  assert "best_test_accuracy_step" not in header and "test_evaluations" not in header
  row = read_csv(tmp_path / "out" / "results.csv")[0]
  assert float(row["student_best_test_accuracy_mean"]) == pytest.approx(np.mean(best), rel=1e-5)
  assert f"{100 * np.mean(best):.2f} ± {100 * np.std(best, ddof=1):.2f}" in table


def test_without_periodic_evaluations_the_accuracy_keeps_its_title(grid):
  table = report.write_report([str(grid / "runs")], str(grid / "out"), plots=False)
  assert "| student acc % |" in table and "best epoch" not in table
