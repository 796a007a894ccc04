"""Exact resume (kd_jax/study/): a run killed with SIGKILL mid-phase and rerun ends with the same
parameters, and a workdir written by an older kd_jax resumes under today's code with the result it
would have had.

The interrupted run is a real `python run.py` process, killed as soon as it has written a checkpoint
inside the phase under test (teachers or student), so the rerun has to resume from the middle.
"""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import kill_when_exists, run_cli, start_run
from kd_jax import study
from tiny_config import get_config

DATA = Path(__file__).resolve().parent / "data"

CONFIG = "--config=tests/tiny_config.py"
SLOW = ["--config.teacher.steps=24", "--config.student.steps=24"]


@pytest.mark.e2e
def test_workdir_of_the_code_before_the_study_layer_resumes_to_the_same_results(tmp_path):
  workdir = tmp_path / "old"
  shutil.copytree(DATA / "old_workdir", workdir)
  expected = json.loads((DATA / "old_workdir_expected_results.json").read_text())
  assert not (workdir / "results.json").exists()  # interrupted: the student stopped at step 8 of 12
  # At XLA's default optimization level, which computed the expected figures (conftest.py compiles
  # the tests without it), so that they must come out bit for bit.
  result = run_cli([CONFIG, f"--workdir={workdir}"],
                   env_extra={"XLA_FLAGS": "--xla_backend_optimization_level=3"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "[student] resuming at step 8/12" in result.stdout
  assert json.loads((workdir / "results.json").read_text()) == expected


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = run_cli([CONFIG, f"--workdir={workdir}", *SLOW])
  assert result.returncode == 0, result.stderr
  return workdir


def _final_params(workdir):
  params = []
  for name in ("teachers/member_0", "teachers/member_1"):
    params.append(ocp.StandardCheckpointer().restore(os.path.join(workdir, name))["params"])
  manager = ocp.CheckpointManager(os.path.join(workdir, "student"))
  params.append(manager.restore(manager.latest_step())["params"])
  manager.close()
  return params



@pytest.mark.e2e
@pytest.mark.parametrize("phase_checkpoint", ["teachers/train_0-1/8", "student/8"])
def test_killed_run_resumes_to_the_same_result(tmp_path, uninterrupted, phase_checkpoint):
  interrupted = tmp_path / "interrupted"
  kill_when_exists(interrupted / phase_checkpoint,
                   start_run([CONFIG, f"--workdir={interrupted}", *SLOW]))
  assert not (interrupted / "results.json").exists()

  resumed = run_cli([CONFIG, f"--workdir={interrupted}", *SLOW])
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming at step" in resumed.stdout
  for a, b in zip(_final_params(uninterrupted), _final_params(interrupted)):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _evaluated_config():
  config = get_config()
  config.evaluation.every_steps = 2  # student steps 2, 4, ..., 12; checkpoints at 4, 8, 12
  return config


@pytest.mark.e2e
def test_a_resumed_run_reports_the_best_evaluation_of_an_uninterrupted_one(tmp_path):
  """A kill after the student's checkpoint at step 8 and its evaluations at 10 and 12 leaves those
  records in metrics.jsonl (the last one cut short), which the resumed run logs again from step 8:
  the history, and the best, must be the uninterrupted run's."""
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  expected = study.run(_evaluated_config(), str(whole))["student"]
  assert expected["test_evaluations"] == 6
  study.run(_evaluated_config(), str(killed))
  shutil.rmtree(killed / "student" / "12")
  (killed / "results.json").unlink()
  lines = (killed / "metrics.jsonl").read_text().splitlines()
  kept = []
  for line in lines:
    record = json.loads(line)
    if record.get("phase") == "evaluation":
      break  # the final evaluation's record: the kill came before it
    if record.get("evaluation") and record["step"] > 8:
      record["test_accuracy"] = 1.0  # what the replay must overwrite, were it not the same
    kept.append(json.dumps(record))
  (killed / "metrics.jsonl").write_text("\n".join(kept) + '\n{"phase": "student", "st')
  resumed = study.run(_evaluated_config(), str(killed))["student"]
  best_keys = ("best_test_accuracy", "best_test_accuracy_step", "best_test_accuracy_epoch",
               "best_test_agreement", "test_evaluations", "last_test_accuracy", "last_epoch")
  assert {k: resumed[k] for k in best_keys} == {k: expected[k] for k in best_keys}
  assert resumed == expected
