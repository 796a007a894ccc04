"""The command line every entry point shares (kd_jax/experiments/cli.py): what a newcomer meets
first (run.py's --help and --print_config, process setup kept out of imports), `--config.*`
overrides, and the exit status of each outcome."""

import json
import os
import subprocess
import sys

import pytest

from conftest import DIVERGING_EXPERIMENT, REPO
from kd_jax import config as kd_config
from kd_jax import errors
from kd_jax.errors import DivergedError, Interrupted, KdJaxError
from kd_jax.experiments import cli


def _python(*args, env=None):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env=env)


def test_help_lists_the_flags():
  result = _python("run.py", "--help")
  assert result.returncode == 0, result.stderr
  for flag in ("--config", "--workdir", "--print_config", "--distributed", "--config.KEY=VALUE"):
    assert flag in result.stdout


def test_print_config_shows_the_resolved_config_and_runs_nothing(tmp_path):
  result = _python("run.py", "--config=configs/quickstart.py", "--print_config",
                   "--config.distill.temperature=2", "--config.evaluation.independent_student=t")
  assert result.returncode == 0, result.stderr
  config = json.loads(result.stdout)
  assert config["distill"]["temperature"] == 2.0 and config["evaluation"]["independent_student"]
  assert config["teacher"]["model"]["name"] == "digits_cnn"


def test_importing_kd_jax_changes_nothing_in_the_process():
  code = ("import os, signal\n"
          "before = (os.environ.get('XLA_FLAGS'), signal.getsignal(signal.SIGTERM))\n"
          "import kd_jax.train, kd_jax.study, kd_jax.experiments.sweep\n"
          "assert (os.environ.get('XLA_FLAGS'), signal.getsignal(signal.SIGTERM)) == before\n"
          "from kd_jax import runtime\n"
          "runtime.setup_process()\n"
          "assert signal.getsignal(signal.SIGTERM) is not before[1]\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = _python("-c", code, env=env)
  assert result.returncode == 0, result.stderr


def test_print_config_validates_the_config(tmp_path):
  result = _python("run.py", "--config=configs/quickstart.py", "--print_config",
                   "--config.teacher.ensemble_size=0")
  assert result.returncode == errors.USAGE_EXIT
  lines = result.stderr.strip().splitlines()
  assert lines == ["error: config.teacher.ensemble_size=0 must be > 0."]
  assert not result.stdout


def test_overrides_take_the_type_of_their_field():
  config = kd_config.default_config()
  cli.apply_overrides(config, [("student.steps", "7"), ("distill.temperature", "2"),
                               ("student.optimizer.nesterov", "false"), ("data.name", "digits")])
  assert (config.student.steps, config.distill.temperature) == (7, 2.0)
  assert isinstance(config.distill.temperature, float)
  assert config.student.optimizer.nesterov is False and config.data.name == "digits"


# ---------------------------------------------------------------------------------------------------
# One exit status per outcome, for every entry point

def _exit(raised, resume_detail=""):
  with pytest.raises(SystemExit) as exit_info:
    with cli.exit_statuses(resume_detail):
      raise raised
  return exit_info.value.code


@pytest.mark.parametrize("raised, status", [
    (KdJaxError("bad --config.x"), errors.USAGE_EXIT),
    (DivergedError("student diverged at step 3"), errors.DIVERGED_EXIT),
])
def test_errors_are_one_line_with_their_status(capsys, raised, status):
  assert _exit(raised) == status
  captured = capsys.readouterr()
  assert captured.err == f"error: {raised}\n" and not captured.out


@pytest.mark.parametrize("raised", [Interrupted("SIGTERM"), KeyboardInterrupt()])
def test_interruptions_say_how_to_resume(capsys, raised):
  workdir = []
  assert _exit(raised, lambda: f" from {workdir[0]}" if workdir else "") == errors.INTERRUPTED_EXIT
  assert capsys.readouterr().err == "interrupted; rerun the same command to resume\n"
  workdir.append("runs/x")  # the detail is asked for when the interruption happens
  assert _exit(raised, lambda: f" from {workdir[0]}") == errors.INTERRUPTED_EXIT
  assert capsys.readouterr().err == "interrupted; rerun the same command to resume from runs/x\n"
  assert _exit(raised, " (finished runs are skipped)") == errors.INTERRUPTED_EXIT
  assert "resume (finished runs are skipped)" in capsys.readouterr().err


def test_other_exceptions_keep_their_traceback():
  with pytest.raises(ZeroDivisionError):
    with cli.exit_statuses():
      raise ZeroDivisionError("a bug")
  with cli.exit_statuses():
    pass  # no exception, no exit


@pytest.mark.parametrize("text, expected", [("t", True), ("false", False), ("1", True)])
def test_run_and_sweep_parse_booleans_alike(tmp_path, text, expected):
  from kd_jax import config as kd_config
  from kd_jax.experiments import sweep
  by_run = cli.apply_overrides(kd_config.default_config(),
                               [("evaluation.independent_student", text)])
  experiment = tmp_path / "diverging.py"
  experiment.write_text(DIVERGING_EXPERIMENT)
  (by_sweep, _) = sweep.plan_experiments(
      [sweep.Experiment.load(str(experiment), str(tmp_path / "sweep"))], [0],
      [("evaluation.independent_student", text)])
  assert by_run.evaluation.independent_student is expected
  assert by_sweep.config.evaluation.independent_student is expected


def test_a_section_takes_a_dict_with_all_its_keys():
  from kd_jax import config as kd_config
  replacement = kd_config.optimizer_config(name="adam", learning_rate=0.01).to_dict()
  config = cli.apply_overrides(kd_config.default_config(), [("teacher.optimizer", str(replacement))])
  assert config.teacher.optimizer.to_dict() == replacement
  with pytest.raises(KdJaxError, match="missing: decay_epochs, decay_factor, final_learning_rate"):
    cli.apply_overrides(kd_config.default_config(), [("teacher.optimizer", "{'name': 'adam'}")])
