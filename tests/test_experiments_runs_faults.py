"""kd_jax/experiments/runs.py and verdicts.py under faults: a run whose results.json is damaged is
not finished."""

import json

from conftest import write_suite_run
from kd_jax.experiments import report, runs, verdicts


def _damage_results(workdir):
  (workdir / "results.json").write_text('{"teachers": [{"test_acc')


def test_a_run_with_damaged_results_is_skipped_with_a_note(tmp_path, capsys):
  good = tmp_path / "runs" / "good"
  damaged = tmp_path / "runs" / "damaged"
  for workdir, seed in ((good, 0), (damaged, 1)):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"seed": seed}))
    (workdir / "results.json").write_text(json.dumps(
        {"teachers": [{"test_accuracy": 0.9}], "ensemble": {"test_accuracy": 0.9}, "student": {}}))
  _damage_results(damaged)
  assert runs.find_workdirs([str(tmp_path / "runs")]) == [str(good)]
  assert f"skipping {damaged}: its results.json is damaged" in capsys.readouterr().err
  report.write_report([str(tmp_path / "runs")], str(tmp_path / "report"), plots=False)


def test_a_suite_run_with_damaged_results_is_a_problem_not_an_error(tmp_path):
  write_suite_run(tmp_path, "exp", "v", 0, student={"test_agreement": 0.5})
  write_suite_run(tmp_path, "exp", "v", 1, student={"test_agreement": 0.6})
  _damage_results(tmp_path / "exp" / "v" / "seed1")
  cell = verdicts.load_cell(str(tmp_path), "exp", "v", [0, 1], "student.test_agreement")
  assert cell.values == {0: 0.5}
  assert "results.json is damaged" in cell.problems[1]
