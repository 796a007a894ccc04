"""Runs one knowledge-distillation study: teachers -> student -> fidelity and generalization.

  python run.py --config=configs/quickstart.py --workdir=runs/quickstart
  python run.py --config=configs/cifar_kd.py --workdir=runs/c100 --config.distill.temperature=1

Rerunning a command resumes its workdir. Problems the user can fix (a bad config key or value, missing
data or teacher checkpoints, a workdir that holds another run) print one line and exit with status 2.
"""

import importlib.util
import os
import signal
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for config.json, metrics, checkpoints, results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods, GPU clusters); "
    "on TPU, SLURM, Kubernetes and MPI it finds the processes itself, elsewhere give the flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")

USAGE_EXIT = 2


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT)


def _config_file(argv) -> str:
  for arg in argv[1:]:
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return ""


def _first_unknown_override(argv, config_path: str):
  """Names the first --config.a.b=... override whose key the config does not have."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("kd_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node = config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        return key
      node = node[part]
  return None


def parse_flags(argv):
  config_path = _config_file(argv)
  if not config_path:
    _fail("no config given; pass --config=configs/<name>.py (for a first look: configs/quickstart.py).")
  if not os.path.isfile(config_path.partition(":")[0]):
    _fail(f"config file {config_path.partition(':')[0]} does not exist; see configs/ for the ones we ship.")
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raised (e.g. get_config refusing an unknown variant) arrives as a flag error
    # carrying the whole traceback; its last line is the message.
    last_line = str(e).strip().splitlines()[-1]
    _fail(last_line.split("Error: ", 1)[1] if "Error: " in last_line else last_line)
  except (AttributeError, KeyError) as e:
    unknown = _first_unknown_override(argv, config_path)
    if unknown is None:
      raise
    _fail(f"unknown config key '{unknown}' (from --config.{unknown}); run with the config file alone "
          "and read config.json in the workdir, or kd_jax/config.py, for the valid keys.")
  if not _WORKDIR.value:
    _fail("no workdir given; pass --workdir=runs/<name> (an empty or new folder, or a run to resume).")


def main(argv):
  parse_flags(argv)
  # tfds and orbax log routine details through absl at WARNING/INFO; our own output is print().
  logging.set_verbosity(logging.ERROR)
  # Preemption and `kill` send SIGTERM: treat it like Ctrl-C so the run checkpoints before exiting.
  signal.signal(signal.SIGTERM, signal.default_int_handler)

  import jax  # After flag parsing, so `--help` and config errors come back fast.
  from kd_jax import KdJaxError, pipeline

  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  # Reruns (a resume after preemption, the next student on the same teachers) skip recompiling.
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "KD_JAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "kd_jax", "xla")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except KdJaxError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    print(f"interrupted; rerun the same command to resume from {_WORKDIR.value}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main(sys.argv)
