"""The multi-run report on synthetic workdirs: grouping into variants, statistics, files and plots."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from kd_jax import KdJaxError, report
from kd_jax import config as kd_config

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
  """A finished workdir as pipeline.run leaves it (config.json, metrics.jsonl, results.json)."""
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
  records = report.training_records(workdir)
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


def test_ignored_keys_cover_the_pipelines_operational_keys():
  from kd_jax import workdir
  assert set(workdir.OPERATIONAL_KEYS) <= set(report.IGNORED_KEYS)
