"""kd_jax/experiments/sweep.py under faults: a sweep repairs a run whose results.json is damaged."""

import json

import pytest

from conftest import REPO
from kd_jax.experiments import sweep

EXPERIMENT = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import tiny_config

VARIANTS = ("only",)


def get_config(variant=None):
  return tiny_config()
"""


@pytest.mark.e2e
def test_a_sweep_evaluates_a_run_with_damaged_results_again(tmp_path, capsys):
  experiment = tmp_path / "one.py"
  experiment.write_text(EXPERIMENT)
  root = tmp_path / "sweep"
  args = [f"--config={experiment}", f"--workdir={root}", "--seeds=0"]
  sweep.main(args)
  results_path = root / "only" / "seed0" / "results.json"
  results = json.loads(results_path.read_text())
  results_path.write_text(results_path.read_text()[:40])  # cut short
  capsys.readouterr()
  sweep.main(args)
  out = capsys.readouterr().out
  assert "only/seed0: finished: skipped" not in out
  assert json.loads(results_path.read_text()) == results
  assert "report written to" in out
