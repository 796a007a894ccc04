"""Runs an experiment (configs/paper/*.py): every variant for several seeds, then a report.

  python sweep.py --config=configs/paper/EXPERIMENT.py --workdir=runs/EXPERIMENT --seeds=0,1,2
  python sweep.py --config=configs/paper/EXPERIMENT.py --workdir=runs/EXPERIMENT --dry-run

Runs land in WORKDIR/<variant>/seed<k>, the report in WORKDIR/report. Rerunning the command skips
finished runs and resumes an interrupted one; a run that diverged is skipped and flagged (exit 3).
See kd_jax/experiments/sweep.py for the details.
"""

import sys

from kd_jax import runtime


def main(argv):
  # Before JAX is imported: the compilation cache (shared with run.py) is set through JAX's
  # environment variables, so --help and planning errors come back without waiting for JAX.
  runtime.setup_process()
  from kd_jax.experiments import sweep  # pylint: disable=g-import-not-at-top
  sweep.main(argv[1:])


if __name__ == "__main__":
  runtime.run_entry_point(main, sys.argv)
