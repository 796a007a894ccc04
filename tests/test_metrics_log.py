"""Watching training: step metrics with norms and learning rate, TensorBoard events, profiler traces;
the periodic evaluations read back as a history and the best of them."""

import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config
from kd_jax import metrics_log, study, train
from kd_jax import results as results_lib


def _read_events(path):
  """(tag, step, value) of every scalar in a TensorBoard event file, read as the format is specified
  (TFRecord: length, length CRC, Event proto, data CRC) rather than with the writer's own code."""
  from tensorboardX.proto import event_pb2
  scalars = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      event = event_pb2.Event.FromString(f.read(length))
      f.read(4)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("watched"))
  config = tiny_config()
  config.profile_steps = 2
  config.evaluation.every_steps = 4
  results = study.run(config, workdir)
  return config, workdir, results


@pytest.mark.e2e
def test_tensorboard_events_hold_the_logged_curves(watched_run):
  pytest.importorskip("tensorboardX")  # requirements.txt installs it
  config, workdir, _ = watched_run
  files = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert len(files) == 1
  scalars = _read_events(files[0])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  logged = [(r["step"], r["loss"], r["lr"]) for r in records
            if r.get("phase") == "student" and "loss" in r]
  curve = [(step, value) for tag, step, value in scalars if tag == "student/loss"]
  assert [step for step, _ in curve] == [step for step, _, _ in logged]
  assert [value for _, value in curve] == pytest.approx([loss for _, loss, _ in logged], rel=1e-6)
  assert {"teachers_1-2_of_2/grad_norm", "student/param_norm", "student/update_norm",
          "evaluation/student_test_accuracy"} <= {tag for tag, _, _ in scalars}
  # The logged learning rate is the schedule's value for the last step of each window.
  schedule = train.learning_rate_schedule(config.student.optimizer, config.student.steps,
                                          1437 // config.student.batch_size)
  assert [lr for _, _, lr in logged] == pytest.approx(
      [float(schedule(step - 1)) for step, _, _ in logged], rel=1e-6)


@pytest.mark.e2e
def test_profiler_trace_is_written_for_each_phase(watched_run):
  _, workdir, _ = watched_run
  for phase in ("teachers_1-2_of_2", "student"):
    assert glob.glob(os.path.join(workdir, "profile", phase, "**", "*.xplane.pb"), recursive=True)


@pytest.mark.e2e
def test_evaluation_every_n_steps_gives_curves_ending_at_the_final_result(watched_run):
  _, workdir, results = watched_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if r.get("evaluation")]
  assert [r["step"] for r in evaluations] == [4, 8, 12]
  assert {"test_accuracy", "test_agreement", "test_kl"} <= evaluations[-1].keys()
  # The last one evaluates the final student: the numbers of results.json.
  for key in ("test_accuracy", "test_agreement", "test_kl"):
    assert evaluations[-1][key] == pytest.approx(results["student"][key], rel=1e-6)


@pytest.mark.e2e
def test_results_hold_the_best_and_the_last_epoch_of_the_evaluations(watched_run):
  config, workdir, results = watched_run
  student = results["student"]
  records = metrics_log.evaluation_records(os.path.join(workdir, "metrics.jsonl"), "student")
  assert [r["step"] for r in records] == [4, 8, 12]
  assert [r["epoch"] for r in records] == [round(s / (1437 // 32), 4) for s in (4, 8, 12)]
  # The last evaluation is the final one: results.json's own figures stand for step 12.
  accuracies = [records[0]["test_accuracy"], records[1]["test_accuracy"], student["test_accuracy"]]
  best = int(np.argmax(accuracies))  # the first of equal maxima, as the references' `>`
  assert student["best_test_accuracy"] == accuracies[best]
  assert student["best_test_accuracy_step"] == (4, 8, 12)[best]
  assert student["best_test_accuracy_epoch"] == round((4, 8, 12)[best] / (1437 // 32), 4)
  assert student["best_test_agreement"] == ([records[0]["test_agreement"], records[1][
      "test_agreement"], student["test_agreement"]][best])
  assert student["test_evaluations"] == 3
  assert student["last_test_accuracy"] == student["test_accuracy"]
  assert student["last_epoch"] == round(12 / (1437 // 32), 4)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["student"]["best_test_accuracy"] == student["best_test_accuracy"]
  assert "best" in results_lib.results_table(results).splitlines()[-1]


def test_the_event_writer_does_not_import_torch_and_torch_imports_after_it(tmp_path):
  """tensorboardX imports torch when it can (two seconds of every run's start); the writer keeps it
  out, and leaves `import torch` working for the code that needs it."""
  pytest.importorskip("tensorboardX")
  pytest.importorskip("torch")  # requirements-test.txt installs it
  code = ("import sys\n"
          "from kd_jax import metrics_log\n"
          f"writer = metrics_log.EventWriter({str(tmp_path)!r})\n"
          "writer.write({'phase': 'student', 'step': 1, 'loss': 0.5})\n"
          "writer.close()\n"
          "assert 'torch' not in sys.modules, 'torch was imported'\n"
          "import torch\n"
          "print(torch.ones(2).sum().item())\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["2.0"]
  assert [tag for tag, _, _ in _read_events(glob.glob(str(tmp_path / "events.out.*"))[0])] == [
      "student/loss"]


def _write_records(path, records, tail=""):
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_evaluation_records_are_one_per_step_of_the_phase_the_later_winning(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_records(path, [
      {"phase": "student", "step": 2, "evaluation": True, "test_accuracy": 0.1},
      {"phase": "student", "step": 4, "evaluation": True, "test_accuracy": 0.2},
      {"phase": "student", "step": 4, "loss": 1.0},  # a training record
      {"phase": "independent student", "step": 4, "evaluation": True, "test_accuracy": 0.9},
      {"event": "resume"},
      {"phase": "student", "step": 4, "evaluation": True, "test_accuracy": 0.3},  # replayed
      {"phase": "student", "step": 6, "evaluation": True, "test_accuracy": 0.4},
  ], tail='{"phase": "student", "step": 8, "evalu')  # cut short by a kill
  records = metrics_log.evaluation_records(str(path), "student")
  assert [(r["step"], r["test_accuracy"]) for r in records] == [(2, 0.1), (4, 0.3), (6, 0.4)]
  assert metrics_log.evaluation_records(str(tmp_path / "none.jsonl"), "student") == []


def test_best_evaluation_is_the_first_maximum_of_the_finite_accuracies():
  rng = np.random.default_rng(0)
  accuracies = rng.choice([0.5, 0.6, 0.7], size=20).tolist()
  accuracies[3] = None  # logged as null: not finite when evaluated
  records = [{"step": 5 * (i + 1), "test_accuracy": a, "test_agreement": 0.01 * i}
             for i, a in enumerate(accuracies)]
  best = metrics_log.best_evaluation(records, steps_per_epoch=10)
  values = np.array([-np.inf if a is None else a for a in accuracies])
  first = int(np.flatnonzero(values == values.max())[0])
  assert best == {"best_test_accuracy": accuracies[first], "best_test_accuracy_step": 5 * (first + 1),
                  "best_test_accuracy_epoch": 5 * (first + 1) / 10,
                  "best_test_agreement": 0.01 * first, "test_evaluations": 19,
                  "last_test_accuracy": accuracies[-1], "last_epoch": 10.0}
  assert metrics_log.best_evaluation([{"step": 1, "test_accuracy": None}], 1) == {}
