"""Benchmark harness: kd_jax's real compiled steps, timed on whatever backend JAX sees.

  python -m benchmarks.kd_step --quick                    # < 2 minutes on a 2-core CPU
  python -m benchmarks.kd_step --depth 20 --m 3 --batch 128 --classes 100 --precision fp32 \
      --steps 20
  python -m benchmarks.kd_step --depth 20 56 --m 1 3 5 --precision fp32 bf16   # a grid
  python -m benchmarks.kd_step --kind teacher --members 1 5 --depth 56 --batch 256
  python -m benchmarks.kd_step --full                     # the issue's whole table (GPU)
  python -m benchmarks.kd_step --estimate-study           # the paper's baseline study, in minutes
  python -m benchmarks.kd_step --side-by-side             # LeNet-5, kd_jax and PyTorch interleaved
  python -m benchmarks.kd_step --side-by-side --model preresnet   # the same for PreResNet-20
  python -m benchmarks.kd_step --methods --steps 20       # every method's step, relative to kd
  python -m benchmarks.kd_step --methods kd fitnet crd    # some of them

Every case prints one JSON line (keys: see benchmarks/measure.py RECORD_KEYS) as soon as it is
measured, and a table at the end. Kinds of case (benchmarks/cases.py):

  distill  `train.make_distill_step`: m stacked teachers (eval) + student forward/backward + update.
  teacher  `train.make_supervised_step` with `members` stacked teachers trained in one step.
  epoch    one end-to-end epoch of the distill step driven like the training loop (asynchronous,
           metrics fetched every 100 steps) on an in-memory train set, plus the input part alone
           (batch gather + crop/flip + normalize), so the input's share of an epoch shows.

Timing (benchmarks/measure.py): each step is compiled ahead of time, then `--warmup` untimed steps,
then `--steps` timed steps, each ended by `block_until_ready`; `step_ms` is their median. `compiles`
counts XLA compilations over the whole measured phase and should be 1: more means some step
retraced. FLOPs per step come from XLA's cost analysis; the fraction of the device's peak is given
where the peak is known. On CPU the record also says how busy the rest of the machine was while the
steps were timed (`host_other_busy`), because on a shared machine that, not the code, can decide the
number.

Models: `--model preresnet` (the default; CIFAR-shaped 32x32x3 data, crop and flip) or `lenet5`
(Fashion-MNIST-shaped 28x28x1 data, 60,000 train images, no augmentation, as
configs/fashion_mnist_kd.py; use --classes 10). Each case's steps are those of a run of the model's
paper config (configs/cifar_kd.py, configs/fashion_mnist_kd.py) with the case's settings.
`--lenet-pooling max --max-pool flax` times LeNet-5 max-pooled by flax's nn.max_pool (LeNet5's
max_pool_impl 'reduce_window') instead of kd_jax's reshape-max.

Side by side (`--side-by-side`, benchmarks/side_by_side.py): for each model, the teacher step (3
stacked members, batch 256) and the distillation step (3 teachers, batch 128) of kd_jax and of
benchmarks/torch_reference.py (PyTorch eager, the same networks, data shapes and optimizers; on the
GPU where kd_jax runs on one), timed in `--rounds` alternating rounds of `--steps` steps, so that
load from other processes falls on both; PreResNet of `--depth` (default 20). For LeNet-5, whose
distillation data is not augmented, a third row, `cached`: the step a run runs there (teacher
logits computed once per run on the train set), with `cache_s`, the table's one-time cost, and
`ratio_one_epoch`, the ratio with that cost spread over a single epoch's steps.
Without torch installed, only the kd_jax columns are filled.

Methods (`--methods [NAMES]`, default every method of kd_jax.config.DISTILL_METHODS but 'paper'):
the fused distillation step of each method for the laptop benchmark's pair, resnet20 -> resnet8
on CIFAR-10-shaped data, as a run of configs/benchmark/laptop.py with distill.method=<name> builds
it (the method's options there, e.g. CRD's nce_k; its batch, 64, and train-set size, 4,000, unless
--batch / --train-size say otherwise; a feature method's parameters and state initialized as a run
does), each timed as above. kd is always measured, first, so that every record carries
`relative_to_kd`, its step time over kd's in the same process; the table ends with one row per
method.

The study estimate (`--estimate-study`, benchmarks/estimate.py) measures the steps of the paper's
baseline study and counts them by the library's own study plan.
"""

import argparse
import itertools
import os
import sys

from benchmarks import cases as cases_lib
from benchmarks import estimate, harness, measure, profiles
from kd_jax import ensemble, parallel, runtime
from kd_jax.errors import KdJaxError
from kd_jax.experiments import cli

DEFAULT_BATCH = 128
BASELINE_METHOD = "kd"  # --methods: every step time is relative to this method's

def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Time kd_jax's compiled distillation and teacher steps.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--kind", nargs="+", choices=cases_lib.KINDS, default=["distill"])
  parser.add_argument("--model", nargs="+", choices=cases_lib.MODELS, default=None,
                      help="default: preresnet (--side-by-side: lenet5)")
  parser.add_argument("--depth", nargs="+", type=int, default=[20])
  parser.add_argument("--m", nargs="+", type=int, default=[3], help="teachers in the ensemble")
  parser.add_argument("--members", nargs="+", type=int, default=[1],
                      help="teachers trained together in one step (--kind teacher)")
  parser.add_argument("--batch", nargs="+", type=int, default=None,
                      help="global batch (default 128; --methods: the laptop config's, 64)")
  parser.add_argument("--classes", nargs="+", type=int, default=[100])
  parser.add_argument("--precision", nargs="+", choices=tuple(cases_lib.PRECISIONS),
                      default=["fp32"])
  parser.add_argument("--method", nargs="+", choices=ensemble.METHODS, default=["auto"],
                      help="how the stacked members run inside the step")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per case (0 = compile only: FLOPs and planned memory); "
                           "default 20, with --side-by-side 10 per round")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--train-size", type=int, default=0,
                      help="synthetic train-set size (an epoch case runs over all of it; 0 = the "
                           "model's data set: 50,000 for preresnet, 60,000 for lenet5)")
  parser.add_argument("--epoch-steps", type=int, default=0,
                      help="epoch cases: run only this many steps and extrapolate "
                           "(0 = whole epoch)")
  parser.add_argument("--methods", nargs="*", choices=cases_lib.ZOO_METHODS, default=None,
                      metavar="METHOD",
                      help="each method's distillation step on the laptop benchmark's pair, "
                           "relative to kd (no names: every method but 'paper')")
  parser.add_argument("--quick", action="store_true", help="a small CPU-sized set of cases")
  parser.add_argument("--full", action="store_true", help="the issue's whole table (for a GPU)")
  parser.add_argument("--large-batch", type=int, default=1024, help="the large batch of --full")
  _add_side_by_side_args(parser)
  _add_study_args(parser)
  parser.add_argument("--lenet-pooling", choices=("", "avg", "max"), default="",
                      help="LeNet-5's pooling (default: the model config's, 'avg')")
  parser.add_argument("--max-pool", choices=tuple(cases_lib.MAX_POOL_IMPLS), default="kd_jax",
                      help="flax: LeNet-5 max-pools with nn.max_pool (A/B of lenet.max_pool)")
  parser.add_argument("--profile-dir", default="",
                      help="also trace 3 steps of each distill/teacher case into this folder and "
                           "print the top operations")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  if args.steps is None:
    args.steps = 10 if args.side_by_side else 20
  return args


def _add_side_by_side_args(parser):
  parser.add_argument("--side-by-side", action="store_true",
                      help="kd_jax and PyTorch teacher and distill steps of --model (default "
                           "lenet5), interleaved, with a comparison table")
  parser.add_argument("--rounds", type=int, default=5, help="--side-by-side: alternating rounds")
  parser.add_argument("--torch-channels-last", action="store_true",
                      help="--side-by-side: PyTorch in channels-last memory format")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="--side-by-side: torch.set_num_threads (0 = torch's default)")
  parser.add_argument("--torch", action="store_true",
                      help="also time benchmarks/torch_reference.py for each fp32 distill case")


def _add_study_args(parser):
  parser.add_argument("--estimate-study", action="store_true",
                      help="measure the steps of the paper's baseline study and estimate its time")
  parser.add_argument("--study-depth", type=int, default=estimate.Study.depth)
  parser.add_argument("--teacher-batch", type=int, default=estimate.Study.teacher_batch)
  parser.add_argument("--student-batch", type=int, default=estimate.Study.student_batch)
  parser.add_argument("--members-per-step", type=int, default=estimate.Study.members_per_step)
  parser.add_argument("--study-precision", choices=tuple(cases_lib.PRECISIONS),
                      default=estimate.Study.precision)


def grid(args) -> list:
  """The cases that the command line asks for (every combination of the listed values)."""
  cases = []
  for model, kind, depth, m, members, batch, classes, precision, method in itertools.product(
      args.model or ["preresnet"], args.kind, args.depth, args.m, args.members,
      args.batch or [DEFAULT_BATCH],
      args.classes, args.precision, args.method):
    if kind == "teacher":
      m = 1  # teacher cases ignore m; keep one copy of each
    else:
      members = 1
    cases.append(cases_lib.Case(
        kind=kind, model=model, lenet_pooling=args.lenet_pooling, max_pool=args.max_pool,
        depth=depth, m=m, members=members, batch=batch, classes=classes, precision=precision,
        method=method, steps=args.steps, warmup=args.warmup,
        train_size=args.train_size or cases_lib.MODEL_TRAIN_SIZE[model],
        epoch_steps=args.epoch_steps))
  return list(dict.fromkeys(cases))


def run_side_by_side(args):
  # PyTorch is imported only when a comparison with it is asked for.
  from benchmarks import side_by_side  # pylint: disable=import-outside-toplevel
  side_by_side.set_torch_threads(args.torch_threads)
  if len(args.depth) > 1:
    raise KdJaxError("--side-by-side times one PreResNet depth; give one --depth.")
  cases = side_by_side.side_by_side_cases(args.model or ["lenet5"], args.steps, args.warmup,
                                          args.lenet_pooling, args.max_pool, depth=args.depth[0])
  records = side_by_side.side_by_side(cases, args.rounds,
                                      torch_channels_last=args.torch_channels_last)
  for record in records:
    harness.emit(record, args.out)
  print(side_by_side.side_by_side_table(records))


def run_estimate(args):
  study = estimate.Study(depth=args.study_depth, members_per_step=args.members_per_step,
                         teacher_batch=args.teacher_batch, student_batch=args.student_batch,
                         precision=args.study_precision)
  records = {}
  for name, case in estimate.study_cases(study, args.steps, args.warmup).items():
    records[name] = measure.run_case(case)
    harness.emit(records[name], args.out)
  print(measure.table(records.values()))
  study_estimate = estimate.estimate_study(study, records)
  harness.emit({"event": "study_estimate", **study_estimate}, args.out)
  print("\n" + estimate.summary(study_estimate))


def _profile_name(case: cases_lib.Case) -> str:
  return f"{case.kind}_d{case.depth}_m{case.m}_k{case.members}_b{case.batch}_{case.precision}"


def run_cases(cases, args):
  """Measures each case (and profiles it, and times PyTorch's step, if asked); prints the table."""
  mesh = parallel.make_mesh()
  data = cases_lib.case_data_cache(mesh)
  records = []
  for case in cases:
    record = measure.run_case(case, mesh, data(case))
    harness.emit(record, args.out)
    records.append(record)
    if args.profile_dir and case.kind != "epoch":
      name = _profile_name(case)
      ops = profiles.profile_case(case, os.path.join(args.profile_dir, name), mesh=mesh,
                                  data=data(case))
      harness.emit({"event": "profile", "case": name, "top_ops": ops}, args.out)
    if args.torch and case.kind == "distill" and case.precision == "fp32":
      from benchmarks import side_by_side  # pylint: disable=import-outside-toplevel
      torch_record = side_by_side.torch_record(case)
      harness.emit(torch_record, args.out)
      records.append(torch_record)
  print(measure.table(records))


def method_names(names) -> list:
  """The methods --methods times, in order: the baseline first, then `names` (default
  cases.BENCHMARK_METHODS) without repeats."""
  return list(dict.fromkeys([BASELINE_METHOD, *(names or cases_lib.BENCHMARK_METHODS)]))


def relative_to(record: dict, baseline: dict):
  """record's step time over baseline's, to 0.01 (None where either was not timed)."""
  if not record["step_ms"] or not baseline["step_ms"]:
    return None
  return round(record["step_ms"] / baseline["step_ms"], 2)


def run_methods(args) -> list:
  """Measures each method's distillation step of the laptop pair (module docstring: Methods);
  prints its record as it is measured and the table at the end; returns the records."""
  if args.batch and len(args.batch) > 1:
    raise KdJaxError("--methods times one batch size; give one --batch.")
  mesh = parallel.make_mesh()
  method_cases = cases_lib.method_cases(method_names(args.methods), args.steps, args.warmup,
                                        batch=args.batch[0] if args.batch else 0,
                                        train_size=args.train_size)
  data = cases_lib.case_data(method_cases[0], mesh)  # every case shares the pair's data set
  records = []
  for case in method_cases:
    record = measure.run_case(case, mesh, data)
    record["relative_to_kd"] = relative_to(record, records[0] if records else record)
    harness.emit(record, args.out)
    records.append(record)
  print(measure.method_table(records))
  return records


def main(argv=None):
  """The command line; a problem with its input (e.g. a batch larger than the train set, or not a
  multiple of the devices) is one line on stderr and exit status 2."""
  runtime.add_cpu_xla_flags()  # as run.py's setup does, before the first JAX computation
  args = parse_args(argv)
  with cli.exit_statuses():
    run(args)


def run(args):
  """Runs the benchmark that `args` (parse_args) ask for."""
  harness.emit({**harness.environment(), "max_pool": args.max_pool}, args.out)
  if args.methods is not None:
    run_methods(args)
  elif args.side_by_side:
    run_side_by_side(args)
  elif args.estimate_study:
    run_estimate(args)
  elif args.quick:
    run_cases(cases_lib.quick_cases(), args)  # (PreResNet cases: --max-pool does not apply)
  elif args.full:
    run_cases(cases_lib.full_cases(args.steps, args.large_batch), args)
  else:
    run_cases(grid(args), args)


if __name__ == "__main__":
  sys.exit(main())
