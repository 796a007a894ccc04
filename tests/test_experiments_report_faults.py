"""kd_jax/experiments/report.py under faults: a full disk while the report is written."""

import errno
import json
import os

import matplotlib.figure
import pytest

from kd_jax import files
from kd_jax.experiments import report


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target, name", [(matplotlib.figure.Figure, "savefig"),
                                          (files, "atomic_path")])
def test_a_full_disk_during_the_report_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys,
                                                             target, name):
  for seed in (0, 1):
    workdir = tmp_path / "runs" / f"seed{seed}"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"seed": seed}))
    (workdir / "results.json").write_text(json.dumps(
        {"teachers": [{"test_accuracy": 0.9}], "ensemble": {"test_accuracy": 0.9},
         "student": {"test_accuracy": 0.8, "test_agreement": 0.7 + seed / 10}}))
  monkeypatch.setattr(target, name, _no_space)
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
      f"error: cannot write the report to {tmp_path / 'report'} (No space left on device); free "
      "disk space or give another --out."]
