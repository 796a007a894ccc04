"""kd_jax/experiments/cli.py under faults: a folder given as the config file."""

import pytest

from conftest import REPO, run_cli
from kd_jax import KdJaxError
from kd_jax.experiments import cli, sweep


def test_a_folder_as_config_file_is_named_a_folder_with_its_config_files(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(KdJaxError) as error:
    cli.load_config_file("configs/paper")
  message = str(error.value)
  assert "configs/paper is a folder" in message and "does not exist" not in message
  assert "configs/paper/ensemble_size.py" in message and "configs/paper/small/" in message
  assert "__init__" not in message
  with pytest.raises(KdJaxError, match="configs/paper is a folder; give one of its files"):
    sweep.load_experiment("configs/paper")


def test_run_with_a_folder_as_config_is_one_line():
  result = run_cli(["--config=configs/paper", "--workdir=/nonexistent/never"])
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: config file configs/paper is a folder; ")
