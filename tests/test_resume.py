"""Exact resume: a run killed with SIGKILL mid-phase and rerun ends with the same parameters.

The interrupted run is a real `python run.py` process, killed as soon as it has written a checkpoint
inside the phase under test (teachers or student), so the rerun has to resume from the middle.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import kill_when_exists, run_cli, start_run

# The tiny config's phases (tests/conftest.py): 12 steps each, a checkpoint every 4.
CONFIG = "--config=tests/tiny_config.py"
SLOW = ["--config.teacher.steps=24", "--config.student.steps=24"]


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
