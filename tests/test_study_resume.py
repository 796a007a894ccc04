"""A workdir written by an older kd_jax resumes under today's code with the result it would have had."""

import json
import shutil
from pathlib import Path

import pytest

from kd_jax import study
from tiny_config import get_config

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.e2e
def test_workdir_of_the_code_before_the_study_layer_resumes_to_the_same_results(tmp_path):
  workdir = tmp_path / "old"
  shutil.copytree(DATA / "old_workdir", workdir)
  expected = json.loads((DATA / "old_workdir_expected_results.json").read_text())
  assert not (workdir / "results.json").exists()  # interrupted: the student stopped at step 8 of 12
  results = study.run(get_config(), str(workdir))
  assert results == expected
  assert json.loads((workdir / "results.json").read_text()) == expected
