"""What a newcomer meets first: run.py's --help and --print_config, process setup kept out of imports."""

import json
import os
import subprocess
import sys

from conftest import REPO


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
          "import kd_jax.train, kd_jax.study, kd_jax.sweep\n"
          "assert (os.environ.get('XLA_FLAGS'), signal.getsignal(signal.SIGTERM)) == before\n"
          "from kd_jax import runtime\n"
          "runtime.setup_process()\n"
          "assert signal.getsignal(signal.SIGTERM) is not before[1]\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = _python("-c", code, env=env)
  assert result.returncode == 0, result.stderr
