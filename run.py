"""Runs one knowledge-distillation study: teachers -> student -> fidelity and generalization.

  python run.py --config=configs/quickstart.py --workdir=runs/quickstart
  python run.py --config=configs/cifar_kd.py --workdir=runs/c100 --config.distill.temperature=1
  python run.py --config=configs/quickstart.py --print_config   (the resolved config; runs nothing)

Rerunning a command resumes its workdir; a finished run prints its results (--force_evaluation
evaluates it again). Exit status: 0 done; 2 a problem the user can fix (a bad config file, key or
value, missing data or teacher checkpoints, a workdir that holds another run or is in use), printed
as one line; 3 training diverged (non-finite loss or weights; diverged.json in the workdir); 130
stopped by Ctrl-C or SIGTERM after saving a checkpoint (rerun to resume).
"""

import argparse
import sys

from kd_jax import runtime
from kd_jax.errors import KdJaxError
from kd_jax.experiments import cli


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="run.py", description="Runs (or resumes) one knowledge-distillation study.",
      epilog="Any --config.KEY=VALUE argument overrides that key of the config (kd_jax/config.py "
             "lists every key); values take the type of the field they replace.")
  parser.add_argument("--config", required=True, metavar="FILE[:ARG]",
                      help="config file, e.g. configs/quickstart.py (ARG goes to get_config)")
  parser.add_argument("--workdir", help="folder for config.json, metrics, checkpoints, results: new, "
                                        "empty, or a run of the same config to resume")
  parser.add_argument("--print_config", action="store_true",
                      help="print the resolved config (after overrides) as JSON and exit")
  parser.add_argument("--force_evaluation", action="store_true",
                      help="a finished run in --workdir is evaluated again (results.json "
                           "rewritten) instead of printing its results")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host TPU pods, GPU "
                           "clusters); on TPU, SLURM, Kubernetes and MPI it finds the processes "
                           "itself, elsewhere give the three flags below")
  parser.add_argument("--coordinator_address", help="with --distributed: host:port of process 0")
  parser.add_argument("--num_processes", type=int, help="with --distributed: number of processes")
  parser.add_argument("--process_id", type=int, help="with --distributed: this process's index")
  return parser


def main(argv) -> None:
  args = argparse.Namespace(workdir=None)
  with cli.exit_statuses(lambda: f" from {args.workdir}" if args.workdir else ""):
    overrides, rest = cli.split_overrides(argv[1:])
    args = _parser().parse_args(rest)
    config = cli.apply_overrides(cli.load_config_file(args.config), overrides)
    if args.print_config:
      from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
      config_lib.validate(config)
      print(config.to_json_best_effort(indent=2, sort_keys=True))
      return
    if not args.workdir:
      raise KdJaxError("no workdir given; pass --workdir=runs/<name> (an empty or new folder, or a "
                       "run to resume).")
    runtime.setup_process()
    # Imported after setup_process (XLA flags, compilation cache), as JAX reads them on import.
    from kd_jax import study  # pylint: disable=g-import-not-at-top
    if args.distributed:
      runtime.initialize_distributed(args.coordinator_address, args.num_processes,
                                     args.process_id)
    study.run(config, args.workdir, args.force_evaluation)  # validates the config


if __name__ == "__main__":
  runtime.run_entry_point(main, sys.argv)
