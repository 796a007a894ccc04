"""Runs an experiment (configs/paper/*.py): every variant for several seeds, then a report.

  python sweep.py --config=configs/paper/EXPERIMENT.py --workdir=runs/EXPERIMENT --seeds=0,1,2
  python sweep.py --config=configs/paper/EXPERIMENT.py --workdir=runs/EXPERIMENT --dry-run

Runs land in WORKDIR/<variant>/seed<k>, the report in WORKDIR/report. Rerunning the command skips
finished runs and resumes an interrupted one. See kd_jax/sweep.py for the details.
"""

import os
import signal
import sys

from absl import logging


def main(argv):
  # tfds and orbax log routine details through absl at WARNING/INFO; our own output is print().
  logging.set_verbosity(logging.ERROR)
  # Preemption and `kill` send SIGTERM: treat it like Ctrl-C so the current run checkpoints.
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  # Runs of a sweep share most programs: the persistent cache (the same as run.py's) spares
  # recompiling them. Set through JAX's environment variables, read when kd_jax first imports JAX,
  # so --help, --dry-run's planning errors and usage errors come back without waiting for it.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(
      "KD_JAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "kd_jax", "xla"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

  from kd_jax import sweep
  sweep.main(argv[1:])


if __name__ == "__main__":
  main(sys.argv)
