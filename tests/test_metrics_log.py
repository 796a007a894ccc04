"""Watching training: step metrics with norms and learning rate, TensorBoard events, profiler traces."""

import glob
import json
import os
import struct

import pytest

from conftest import tiny_config
from kd_jax import study, train

pytestmark = pytest.mark.e2e


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


def test_profiler_trace_is_written_for_each_phase(watched_run):
  _, workdir, _ = watched_run
  for phase in ("teachers_1-2_of_2", "student"):
    assert glob.glob(os.path.join(workdir, "profile", phase, "**", "*.xplane.pb"), recursive=True)


def test_evaluation_every_n_steps_gives_curves_ending_at_the_final_result(watched_run):
  _, workdir, results = watched_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if r.get("evaluation")]
  assert [r["step"] for r in evaluations] == [4, 8, 12]
  assert {"test_accuracy", "test_agreement", "test_kl"} <= evaluations[-1].keys()
  # The last one evaluates the final student: the numbers of results.json.
  for key in ("test_accuracy", "test_agreement", "test_kl"):
    assert evaluations[-1][key] == pytest.approx(results["student"][key], rel=1e-6)
