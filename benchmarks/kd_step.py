"""Benchmark harness: kd_jax's real compiled steps, timed on whatever backend JAX sees.

  python -m benchmarks.kd_step --quick                    # < 2 minutes on a 2-core CPU
  python -m benchmarks.kd_step --depth 20 --m 3 --batch 128 --classes 100 --precision fp32 --steps 20
  python -m benchmarks.kd_step --depth 20 56 --m 1 3 5 --precision fp32 bf16   # a grid
  python -m benchmarks.kd_step --kind teacher --members 1 5 --depth 56 --batch 256
  python -m benchmarks.kd_step --full                     # the issue's whole table (GPU)
  python -m benchmarks.kd_step --estimate-study           # the paper's baseline study, in minutes
  python -m benchmarks.kd_step --side-by-side             # LeNet-5 steps, kd_jax and PyTorch interleaved
  python -m benchmarks.kd_step --side-by-side --model preresnet   # the same for PreResNet-20

Every case prints one JSON line (keys: see `RECORD_KEYS`) as soon as it is measured, and a table at the
end. Kinds of case:

  distill  `train.make_distill_step`: m stacked teachers (eval) + student forward/backward + update.
  teacher  `train.make_supervised_step` with `members` stacked teachers trained in one step.
  epoch    one end-to-end epoch of the distill step driven like `pipeline.fit` (asynchronous, metrics
           fetched every 100 steps) on an in-memory train set, plus the input part alone (batch
           gather + crop/flip + normalize), so the input's share of an epoch shows.

Timing: each step is compiled ahead of time (`jit(...).lower(...).compile()`, which also fills the jit
cache, so the steps then run through the ordinary jit call path as the pipeline's do), then `--warmup`
untimed steps, then `--steps` timed steps, each ended by `block_until_ready`; `step_ms` is their median.
Compilations are counted with a jax.monitoring listener over the whole measured phase (compile + warm-up
+ timed steps); `compiles` should be 1: more means some step retraced. FLOPs per step come from XLA's
cost analysis of the lowered step; the fraction of the device's peak is given where the peak is known.
On CPU the record also says how busy the rest of the machine was while the steps were timed
(`host_other_busy`), because on a shared machine that, not the code, can decide the number.

Models: `--model preresnet` (the default; CIFAR-shaped 32x32x3 data, crop and flip) or `lenet5`
(Fashion-MNIST-shaped 28x28x1 data, 60,000 train images, no augmentation, as configs/fashion_mnist_kd.py;
use --classes 10). The model is built by kd_jax.models.build_model from its default config.

Side by side (`--side-by-side`): for each model, the teacher step (3 stacked members, batch 256) and the
distillation step (3 teachers, batch 128) of kd_jax and of benchmarks/torch_reference.py (PyTorch eager,
the same networks, data shapes and optimizers) are each built and warmed up once, then timed in
`--rounds` alternating rounds of `--steps` steps (kd_jax first in even rounds, PyTorch first in odd
ones), so that load from other processes falls on both. One table row per case: the medians over all
timed steps, images per second and their ratio (kd_jax / PyTorch; > 1 means kd_jax is faster). For
LeNet-5, whose distillation data is not augmented, a third row, `cached`: the step kd_jax's pipeline
runs there (teacher logits computed once per run on the train set, `distill.cache_teacher_logits`),
against the same PyTorch distillation step, which runs its teachers every step as a plain loop (and the
original code) does; the record adds `cache_s`, the table's one-time cost, and `ratio_one_epoch`, the
ratio with that cost spread over a single epoch's steps (the worst case: a run of E epochs spreads it
over E times as many). Without
torch installed, only the kd_jax columns are filled.
"""

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import config as config_lib
from kd_jax import ensemble, evaluation, losses, parallel, pipeline, runtime, train
from kd_jax.data import augment as augment_lib
from kd_jax.models import build_model, lenet

KINDS = ("distill", "teacher", "epoch")
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
RECORD_KEYS = ("kind", "backend", "device", "model", "depth", "m", "members", "batch", "classes",
               "precision", "method", "steps", "compile_s", "trace_s", "compiles", "step_ms",
               "step_ms_min", "images_per_second", "flops_per_step", "achieved_tflops",
               "peak_tflops", "peak_fraction", "peak_memory_bytes", "compiled_memory_bytes")
CIFAR_TRAIN_SIZE = 50_000  # the paper's train sets (CIFAR-10/100)
MNIST_TRAIN_SIZE = 60_000  # (Fashion-)MNIST's train set
IMAGE_SHAPE = (32, 32, 3)
MODELS = ("preresnet", "lenet5")
# Per model: input shape, and the augmentation its paper configs use.
MODEL_IMAGE_SHAPE = {"preresnet": IMAGE_SHAPE, "lenet5": (28, 28, 1)}
MODEL_AUGMENT = {"preresnet": "crop_flip", "lenet5": "none"}
MODEL_TRAIN_SIZE = {"preresnet": CIFAR_TRAIN_SIZE, "lenet5": MNIST_TRAIN_SIZE}
DATA_SEED = 0
_max_pool_impl = "kd_jax"  # which max pooling LeNet-5 uses; see use_flax_max_pool

# Dense peak TFLOP/s by device kind (substring of jax's device_kind) and compute dtype. The fp32 entry is
# the TF32 tensor-core peak, because JAX's default matmul/conv precision lets XLA use TF32 for fp32 on
# these GPUs. More specific names first (an 'H100 PCIe' must not match the SXM 'H100' entry).
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.4, "fp32": 494.7}),
    ("H200", {"bf16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
)


# ------------------------------------------------------------------------------------------------
# Compilation counting.

# jax.monitoring reports this event once per executable jax asks XLA for (a persistent-cache hit
# counts too): exactly what a retrace would add, whether or not a compilation cache is configured.
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_seconds = []
_listening = False


def _on_duration(event, duration, **unused_kwargs):
  if event == _BACKEND_COMPILE_EVENT:
    _compile_seconds.append(duration)


def _listen_to_compiles():
  """Registers the compile listener once per process (jax.monitoring keeps listeners forever)."""
  global _listening
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True


class CompileCounter:
  """Counts XLA backend compilations (and sums their seconds) inside a `with` block."""

  def __enter__(self):
    _listen_to_compiles()
    self._start = len(_compile_seconds)
    return self

  def __exit__(self, *exc):
    self.count = len(_compile_seconds) - self._start
    self.seconds = sum(_compile_seconds[self._start:])
    return False


# ------------------------------------------------------------------------------------------------
# Machine description and contention.


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def device_name() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{_cpu_model()} ({os.cpu_count()} logical cores)"
  return device.device_kind


def _cpu_jiffies():
  """(busy jiffies of all cores, busy jiffies of this process, all jiffies), or None off Linux."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
      own = f.read().rsplit(")", 1)[1].split()
    total = sum(fields)
    busy = total - fields[3] - fields[4]  # minus idle and iowait
    return busy, int(own[11]) + int(own[12]), total  # utime + stime of this process
  except (OSError, IndexError, ValueError):
    return None


def other_busy_fraction(start, end):
  """Share of all cores' time used by other processes between two `_cpu_jiffies` samples."""
  if start is None or end is None or end[2] == start[2]:
    return None
  others = (end[0] - start[0]) - (end[1] - start[1])
  return round(max(others, 0) / (end[2] - start[2]), 3)


# ------------------------------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass(frozen=True)
class Case:
  kind: str = "distill"
  model: str = "preresnet"  # one of MODELS
  lenet_pooling: str = ""  # lenet5: 'avg' | 'max'; '' = the model config's default
  depth: int = 20
  m: int = 3  # teachers in the ensemble (distill, epoch)
  members: int = 1  # teachers trained together in one step (teacher)
  batch: int = 128
  classes: int = 100
  precision: str = "fp32"
  method: str = "auto"  # ensemble.map_members method
  steps: int = 20
  warmup: int = 3
  train_size: int = CIFAR_TRAIN_SIZE
  epoch_steps: int = 0  # epoch: steps to run (0 = the whole epoch, train_size // batch)
  # distill: the step reads the ensemble's logits from a table computed once on the train set (what
  # the pipeline does for unaugmented distillation: pipeline.caches_teacher_logits) instead of
  # running the teachers
  cached_logits: bool = False


def synthetic_data(num_train: int, num_classes: int, mesh,
                   image_shape=IMAGE_SHAPE) -> train.DeviceData:
  """An in-memory dataset of random uint8 images (CIFAR-shaped by default), placed as the pipeline
  places data."""
  rng = np.random.default_rng(DATA_SEED)
  num_test = 1_000
  images = rng.integers(0, 256, (num_train + num_test, *image_shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_train + num_test).astype(np.int32)
  mean, std = pipeline.standardization(*pipeline.channel_statistics(images[:num_train]))
  return parallel.replicate(train.DeviceData(
      train_images=images[:num_train], train_labels=labels[:num_train],
      test_images=images[num_train:], test_labels=labels[num_train:], mean=mean, std=std), mesh)


def _model(case: Case):
  if case.model not in MODELS:
    raise ValueError(f"model {case.model!r} is not one of {MODELS}")
  cfg = config_lib.model_config(name=case.model)
  if case.model == "preresnet":
    cfg.depth = case.depth
  if case.model == "lenet5" and case.lenet_pooling:
    cfg.pooling = case.lenet_pooling
  return build_model(cfg, case.classes, PRECISIONS[case.precision])


def image_shape(case: Case) -> tuple:
  return MODEL_IMAGE_SHAPE[case.model]


def case_data(case: Case, mesh) -> train.DeviceData:
  return synthetic_data(case.train_size, case.classes, mesh, image_shape(case))


def pooling(case: Case):
  """LeNet-5's pooling ('max' or 'avg': case.lenet_pooling or the config default); None otherwise."""
  return _model(case).pooling if case.model == "lenet5" else None


def _augment(case: Case):
  return augment_lib.make_policy(MODEL_AUGMENT[case.model])


def _optimizer(case: Case, teacher: bool):
  """The paper's recipes (teacher: SGD 0.1, LeNet-5 0.05; student: Nesterov 0.05), nominal 300 epochs."""
  steps_per_epoch = max(case.train_size // case.batch, 1)
  if teacher and case.model == "lenet5":  # configs/fashion_mnist_kd.py
    cfg = config_lib.optimizer_config(learning_rate=0.05, weight_decay=5e-4)
  elif teacher:
    cfg = config_lib.optimizer_config(learning_rate=0.1)
  else:
    cfg = config_lib.optimizer_config(learning_rate=5e-2, final_learning_rate=1e-6, nesterov=True)
  return train.make_optimizer(cfg, 300 * steps_per_epoch, steps_per_epoch)


def _stacked_states(model, tx, count: int, mesh, shape=IMAGE_SHAPE):
  """`count` independently initialized train states stacked on a leading axis (one compile)."""
  keys = jax.random.split(jax.random.PRNGKey(1), count)
  init = jax.jit(jax.vmap(lambda key: train.create_state(model, tx, key, shape)),
                 out_shardings=parallel.replicated_sharding(mesh))
  return init(keys)


def teacher_logits_table(model, teacher_variables, data, mesh, precision: str):
  """The ensemble's (N, C) logits on the whole train set, computed as the pipeline caches them
  (kd_jax.evaluation.Evaluator in the evaluation batch shape, then losses.ensemble_log_probs)."""
  evaluator = evaluation.Evaluator(
      model, model, mesh=mesh, compute_dtype=PRECISIONS[precision], method="auto",
      batch_size=evaluation.eval_batch_size(config_lib.default_config().eval_batch_size,
                                            data.train_images.shape[0], mesh))
  member_logits = evaluator.teacher_logits(teacher_variables, data.train_images, data.mean, data.std)
  return jax.jit(losses.ensemble_log_probs,
                 out_shardings=parallel.replicated_sharding(mesh))(member_logits)


def build_distill(case: Case, mesh, data):
  """(step function, its arguments) for a distill case: the library's fused step, unchanged (with
  case.cached_logits, its cached-logits form: then replace the teacher variables in the arguments by
  `teacher_logits_table`)."""
  model = _model(case)
  tx = _optimizer(case, teacher=False)
  step = train.make_distill_step(
      model, model, tx, batch_size=case.batch, augment=_augment(case), mesh=mesh,
      temperature=4.0, alpha=0.0, cached_teacher_logits=case.cached_logits,
      compute_dtype=PRECISIONS[case.precision], method=case.method)
  init = jax.jit(lambda key: train.create_state(model, tx, key, image_shape(case)),
                 out_shardings=parallel.replicated_sharding(mesh))
  state = init(jax.random.PRNGKey(0))
  teachers = _stacked_states(model, tx, case.m, mesh, image_shape(case))
  teacher_variables = train.model_variables(teachers)
  return step, [state, teacher_variables, data]


def build_teacher(case: Case, mesh, data):
  """(step function, its arguments) for `members` teachers trained together in one step."""
  model = _model(case)
  tx = _optimizer(case, teacher=True)
  step = train.make_supervised_step(
      model, tx, batch_size=case.batch, augment=_augment(case), mesh=mesh,
      compute_dtype=PRECISIONS[case.precision], method=case.method)
  return step, [_stacked_states(model, tx, case.members, mesh, image_shape(case)), data]


def _images_per_step(case: Case) -> int:
  return case.batch * (case.members if case.kind == "teacher" else 1)


def peak_tflops(precision: str):
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS:
    if name in kind:
      return peaks[precision]
  return None


def _peak_memory_bytes():
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _compiled_memory_bytes(compiled):
  """Arguments + outputs + temporaries that XLA planned for the step (aliased buffers once)."""
  try:
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  except Exception:  # Not every backend implements memory analysis.
    return None


def _flops(lowered):
  try:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    return float(analysis["flops"])
  except Exception:
    return None


def time_steps(step, args, num_steps: int, warmup: int):
  """Runs warm-up then timed steps (state = args[0] is threaded through).

  Returns (seconds per step, seconds the Python call took to return per step, final args). The
  timed steps run under jax.transfer_guard('disallow'): a step that moved data between host and
  device implicitly would raise here instead of silently costing time.
  """
  args = list(args)
  for _ in range(warmup):
    args[0], step_metrics = step(*args)
  jax.block_until_ready((args[0], step_metrics) if warmup else args[0])
  times, dispatch = [], []
  with jax.transfer_guard("disallow"):
    for _ in range(num_steps):
      start = time.perf_counter()
      args[0], step_metrics = step(*args)
      dispatch.append(time.perf_counter() - start)
      jax.block_until_ready((args[0], step_metrics))
      times.append(time.perf_counter() - start)
  return times, dispatch, args


def measure_step(case: Case, mesh, data) -> dict:
  """Compile, warm up and time one distill or teacher case; returns its record.

  With case.steps == 0 the step is only compiled (FLOPs, compile time and XLA's planned memory,
  no timing): how to size a case that would take too long to run on this machine.
  """
  build = build_distill if case.kind == "distill" else build_teacher
  step, args = build(case, mesh, data)
  times, dispatch = [], []
  with CompileCounter() as counter:
    start = time.perf_counter()
    lowered = step.lower(*args)
    trace_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    before = _cpu_jiffies()
    if case.steps:
      times, dispatch, _ = time_steps(step, args, case.steps, case.warmup)
    after = _cpu_jiffies()
  step_s = statistics.median(times) if times else None
  record = _base_record(case)
  record.update(
      compile_s=round(compile_s, 2), trace_s=round(trace_s, 2), compiles=counter.count,
      step_ms=round(step_s * 1e3, 2) if times else None,
      step_ms_min=round(min(times) * 1e3, 2) if times else None,
      dispatch_ms=round(statistics.median(dispatch) * 1e3, 3) if times else None,
      images_per_second=round(_images_per_step(case) / step_s, 1) if times else None,
      # The device's peak since the process started (GPU/TPU): run a memory case on its own.
      peak_memory_bytes=_peak_memory_bytes(), compiled_memory_bytes=_compiled_memory_bytes(compiled),
      host_other_busy=other_busy_fraction(before, after) if times else None)
  record.update(_flops_fields(_flops(lowered), step_s, case.precision))
  return record


def _flops_fields(flops, step_s, precision):
  achieved = flops / step_s / 1e12 if flops and step_s else None
  peak = peak_tflops(precision)
  return {"flops_per_step": flops,
          "achieved_tflops": round(achieved, 4) if achieved else None,
          "peak_tflops": peak,
          "peak_fraction": round(achieved / peak, 4) if achieved and peak else None}


def _base_record(case: Case) -> dict:
  return {"kind": case.kind, "backend": jax.default_backend(), "device": device_name(),
          "devices": jax.device_count(), "model": case.model,
          "depth": case.depth if case.model == "preresnet" else None, "pooling": pooling(case),
          "m": case.m if case.kind != "teacher" else None,
          "members": case.members if case.kind == "teacher" else None, "batch": case.batch,
          "classes": case.classes, "precision": case.precision,
          "method": ensemble.resolve_method(case.method), "steps": case.steps,
          "train_size": case.train_size,
          "max_pool": _max_pool_impl if pooling(case) == "max" else None,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def measure_input(case: Case, mesh, data, repeats: int = 20) -> float:
  """Median seconds of the step's input part alone: batch gather + crop/flip + normalize."""
  augment = _augment(case)
  dtype = PRECISIONS[case.precision]

  @jax.jit
  def batch_input(rng, step, data):
    images, labels = train.sample_batch(rng, step, data.train_images, data.train_labels, case.batch)
    x = augment_lib.normalize(augment(jax.random.fold_in(rng, step), images), data.mean, data.std,
                              dtype)
    return parallel.shard_batch(x, mesh), labels

  rng = jax.random.PRNGKey(0)
  jax.block_until_ready(batch_input(rng, 0, data))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(batch_input(rng, i + 1, data))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_epoch(case: Case, mesh, data, log_every: int = 100) -> dict:
  """One epoch of the distill step driven as pipeline.fit drives it, and the input part alone."""
  step, args = build_distill(case, mesh, data)
  steps_per_epoch = case.train_size // case.batch
  num_steps = min(case.epoch_steps or steps_per_epoch, steps_per_epoch)
  with CompileCounter() as counter:
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    # One step outside the epoch so that the epoch starts warm, as every epoch after the first does.
    args[0], step_metrics = step(*args)
    jax.block_until_ready(step_metrics)
    before = _cpu_jiffies()
    start = time.perf_counter()
    with jax.transfer_guard("disallow"):  # explicit device_get (the logging) stays allowed
      for i in range(1, num_steps + 1):
        args[0], step_metrics = step(*args)
        if i % log_every == 0:
          jax.device_get(step_metrics)  # the pipeline's logging sync
      jax.block_until_ready((args[0], step_metrics))
    run_s = time.perf_counter() - start
    after = _cpu_jiffies()
  input_s = measure_input(case, mesh, data)
  step_s = run_s / num_steps
  record = _base_record(case)
  record.update(
      steps=num_steps, steps_per_epoch=steps_per_epoch, compile_s=round(compile_s, 2),
      compiles=counter.count, run_s=round(run_s, 2),
      # A partial epoch (--epoch-steps) is extrapolated from its mean step.
      epoch_s=round(step_s * steps_per_epoch, 2), full_epoch=num_steps == steps_per_epoch,
      step_ms=round(step_s * 1e3, 2), images_per_second=round(case.batch / step_s, 1),
      input_ms=round(input_s * 1e3, 2), input_fraction=round(input_s / step_s, 4),
      peak_memory_bytes=_peak_memory_bytes(), compiled_memory_bytes=_compiled_memory_bytes(compiled),
      host_other_busy=other_busy_fraction(before, after))
  return record


def run_case(case: Case, mesh=None, data=None) -> dict:
  """Measures one case (building the synthetic data if not given); returns its JSON-ready record."""
  if case.kind not in KINDS:
    raise ValueError(f"kind {case.kind!r} is not one of {KINDS}")
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(case.batch, mesh, "--batch")
  if data is None:
    data = case_data(case, mesh)
  if case.kind == "epoch":
    return measure_epoch(case, mesh, data)
  return measure_step(case, mesh, data)


# ------------------------------------------------------------------------------------------------
# Profiles.

# Trace lines that hold no device work: Python, the host waiting on the executor, profiler bookkeeping.
_IDLE_EVENTS = ("ThunkExecutor", "end:", "$", "SlinkyThreadPool")


def profile_case(case: Case, directory: str, num_steps: int = 3, mesh=None, data=None,
                 top: int = 15) -> list:
  """Traces `num_steps` steps of a distill/teacher case into `directory` (TensorBoard/Perfetto).

  Returns the `top` operations by total time per step, from the trace's device lines (XLA:CPU's
  worker threads, or the GPU's streams): [{"op", "ms_per_step", "calls_per_step"}]. Operation names
  lose their numeric suffix (fusion.12 -> fusion) so that repeated layers add up. XLA:CPU runs some
  library convolutions asynchronously, outside the traced span of their op: the list then undercounts
  them, and the step time minus the listed total is a lower bound of their share.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  data = case_data(case, mesh) if data is None else data
  step, args = (build_distill if case.kind == "distill" else build_teacher)(case, mesh, data)
  _, _, args = time_steps(step, args, 0, warmup=2)
  with jax.profiler.trace(directory):
    time_steps(step, args, num_steps, warmup=0)
  return _summarize_trace(directory, num_steps, top)


def _summarize_trace(directory: str, num_steps: int, top: int) -> list:
  import glob  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  try:
    from jax._src.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  except ImportError:  # A private API: without it, the trace on disk is still there to read.
    return []
  traces = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))
  if not traces:
    return []
  totals, calls = {}, {}
  for plane in ProfileData.from_file(traces[-1]).planes:
    device_plane = plane.name.startswith("/device:")
    for line in plane.lines:
      if not (device_plane or line.name.startswith("tf_XLAEigen")):
        continue
      for event in line.events:
        if event.name.startswith(_IDLE_EVENTS):
          continue
        name = re.sub(r"\.\d+$", "", event.name)
        totals[name] = totals.get(name, 0) + event.duration_ns
        calls[name] = calls.get(name, 0) + 1
  ranked = sorted(totals, key=totals.get, reverse=True)[:top]
  return [{"op": name, "ms_per_step": round(totals[name] / num_steps / 1e6, 2),
           "calls_per_step": calls[name] // num_steps} for name in ranked]


# ------------------------------------------------------------------------------------------------
# Grids.


def grid(args) -> list:
  """The cases that the command line asks for (every combination of the listed values)."""
  cases = []
  for model, kind, depth, m, members, batch, classes, precision, method in itertools.product(
      args.model or ["preresnet"], args.kind, args.depth, args.m, args.members, args.batch,
      args.classes, args.precision, args.method):
    if kind == "teacher":
      m = 1  # teacher cases ignore m; keep one copy of each
    else:
      members = 1
    cases.append(Case(kind=kind, model=model, lenet_pooling=args.lenet_pooling, depth=depth, m=m,
                      members=members, batch=batch, classes=classes,
                      precision=precision, method=method, steps=args.steps, warmup=args.warmup,
                      train_size=args.train_size or MODEL_TRAIN_SIZE[model],
                      epoch_steps=args.epoch_steps))
  return list(dict.fromkeys(cases))


def quick_cases() -> list:
  """A CPU-sized look at each kind of case (under two minutes on 2 cores)."""
  common = dict(depth=20, batch=128, classes=100, warmup=1)
  return [
      Case(kind="distill", m=3, steps=5, **common),
      Case(kind="teacher", members=1, steps=5, **common),
      Case(kind="teacher", members=3, steps=3, **common),
      Case(kind="epoch", m=3, epoch_steps=20, **common),
  ]


def full_cases(steps: int, large_batch: int) -> list:
  """The issue's table: PreResNet-20/56, m 1/3/5, batch 128 and large, fp32/bf16; teacher; epoch."""
  cases = []
  for depth, m, batch, precision in itertools.product((20, 56), (1, 3, 5), (128, large_batch),
                                                      ("fp32", "bf16")):
    cases.append(Case(kind="distill", depth=depth, m=m, batch=batch, precision=precision,
                      steps=steps))
  for depth, members, precision in itertools.product((20, 56), (1, 5), ("fp32", "bf16")):
    cases.append(Case(kind="teacher", depth=depth, members=members, batch=256, precision=precision,
                      steps=steps))
  cases.append(Case(kind="epoch", depth=56, m=5, batch=128, precision="bf16"))
  return cases


# ------------------------------------------------------------------------------------------------
# Side by side with PyTorch eager (benchmarks/torch_reference.py).


def side_by_side_cases(models, steps: int, warmup: int, lenet_pooling: str = "") -> list:
  """Per model: the teacher step (3 stacked members, batch 256) and the distill step (3 teachers, 128)."""
  cases = []
  for model in models:
    common = dict(model=model, classes=10 if model == "lenet5" else 100, steps=steps,
                  warmup=warmup, train_size=MODEL_TRAIN_SIZE[model], lenet_pooling=lenet_pooling)
    cases.append(Case(kind="teacher", members=3, batch=256, **common))
    cases.append(Case(kind="distill", m=3, batch=128, **common))
    if MODEL_AUGMENT[model] == "none":  # unaugmented distillation: the pipeline caches the logits
      cases.append(Case(kind="distill", m=3, batch=128, cached_logits=True, **common))
  return cases


@dataclasses.dataclass
class _Contender:
  """One case's kd_jax step (with its threaded arguments) and PyTorch step, and their step times."""
  case: Case
  step: object
  args: list
  compile_s: float
  compiles: int
  cache_s: float = None  # cached-logits case: seconds to compute the teacher-logit table
  torch_step: object = None
  jax_rounds: list = dataclasses.field(default_factory=list)  # per round: that round's step seconds
  torch_rounds: list = dataclasses.field(default_factory=list)


def _prepare_contender(case: Case, mesh, data, use_torch: bool, torch_channels_last: bool):
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  step, args = (build_distill if case.kind == "distill" else build_teacher)(case, mesh, data)
  cache_s = None
  if case.cached_logits:  # once per run in the pipeline; timed with its compilation
    start = time.perf_counter()
    args[1] = jax.block_until_ready(
        teacher_logits_table(_model(case), args[1], data, mesh, case.precision))
    cache_s = time.perf_counter() - start
  with CompileCounter() as counter:
    start = time.perf_counter()
    step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    _, _, args = time_steps(step, args, 0, max(case.warmup, 1))
  contender = _Contender(case, step, args, compile_s, counter.count, cache_s)
  if use_torch:
    contender.torch_step, _ = torch_reference.build(
        case.kind, case.model, case.depth, case.m, case.members, case.batch, case.classes,
        torch_channels_last, pooling(case) or "max", case.train_size)
    torch_reference.time_step(contender.torch_step, max(case.warmup, 1))
  return contender


def side_by_side(cases, rounds: int, mesh=None, torch_channels_last: bool = False) -> list:
  """Times each case's kd_jax and PyTorch steps in alternating rounds; one record per case.

  Everything is built, compiled and warmed up first. Then, `rounds` times, each case runs
  `case.steps` kd_jax steps and `case.steps` PyTorch steps, kd_jax first in even rounds and PyTorch
  first in odd ones. A record's step_ms are medians over all its timed steps; `*_round_ms` are the
  per-round medians, to show how much load moved the numbers.
  """
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh() if mesh is None else mesh
  use_torch = torch_reference.available()
  data_cache, contenders = {}, []
  for case in cases:
    key = (case.train_size, case.classes, image_shape(case))
    if key not in data_cache:
      data_cache[key] = case_data(case, mesh)
    contenders.append(_prepare_contender(case, mesh, data_cache[key], use_torch,
                                         torch_channels_last))
  before = _cpu_jiffies()
  with CompileCounter() as timed_compiles:
    for round_index in range(rounds):
      for c in contenders:
        for framework in (("jax", "torch") if round_index % 2 == 0 else ("torch", "jax")):
          if framework == "jax":
            times, _, c.args = time_steps(c.step, c.args, c.case.steps, 0)
            c.jax_rounds.append(times)
          elif c.torch_step is not None:
            c.torch_rounds.append(torch_reference.time_step(c.torch_step, c.case.steps))
  busy = other_busy_fraction(before, _cpu_jiffies())
  records = []
  for c in contenders:
    images = _images_per_step(c.case)
    jax_s = statistics.median(itertools.chain(*c.jax_rounds))
    record = {"event": "side_by_side",
              "kind": "cached" if c.case.cached_logits else c.case.kind, "model": c.case.model,
              "depth": c.case.depth if c.case.model == "preresnet" else None,
              "pooling": pooling(c.case),
              "max_pool": _max_pool_impl if pooling(c.case) == "max" else None,
              "m": c.case.m if c.case.kind == "distill" else None,
              "members": c.case.members if c.case.kind == "teacher" else None,
              "batch": c.case.batch, "classes": c.case.classes, "images_per_step": images,
              "rounds": rounds, "steps_per_round": c.case.steps, "backend": jax.default_backend(),
              "device": device_name(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "jax_compile_s": round(c.compile_s, 2), "jax_compiles": c.compiles,
              "jax_compiles_while_timed": timed_compiles.count,
              "jax_step_ms": round(jax_s * 1e3, 2),
              "jax_round_ms": [round(statistics.median(t) * 1e3, 1) for t in c.jax_rounds],
              "jax_images_per_second": round(images / jax_s, 1),
              "torch": None, "torch_step_ms": None, "torch_images_per_second": None, "ratio": None,
              "host_other_busy": busy}
    if c.cache_s is not None:
      # The table is computed once per run; per step of a single epoch it costs cache_s / S.
      steps_per_epoch = c.case.train_size // c.case.batch
      record.update(cache_s=round(c.cache_s, 3),
                    jax_step_ms_one_epoch=round((jax_s + c.cache_s / steps_per_epoch) * 1e3, 2))
    if c.torch_step is not None:
      torch_s = statistics.median(itertools.chain(*c.torch_rounds))
      torch = torch_reference.torch
      record.update(
          torch=f"{torch.__version__}, {torch.get_num_threads()} threads, "
                f"{'channels_last' if torch_channels_last else 'NCHW'}",
          torch_step_ms=round(torch_s * 1e3, 2),
          torch_round_ms=[round(statistics.median(t) * 1e3, 1) for t in c.torch_rounds],
          torch_images_per_second=round(images / torch_s, 1), ratio=round(torch_s / jax_s, 3))
      if c.cache_s is not None:
        record["ratio_one_epoch"] = round(torch_s / (record["jax_step_ms_one_epoch"] / 1e3), 3)
    records.append(record)
  return records


_SIDE_BY_SIDE_COLUMNS = (("model", 9), ("kind", 7), ("m", 2), ("members", 7), ("batch", 5),
                         ("jax_step_ms", 11), ("jax_images_per_second", 10), ("torch_step_ms", 13),
                         ("torch_images_per_second", 11), ("ratio", 9), ("host_other_busy", 5))
_SIDE_BY_SIDE_HEADERS = {"jax_step_ms": "kd_jax ms", "jax_images_per_second": "kd_jax img/s",
                         "torch_step_ms": "PyTorch ms", "torch_images_per_second": "torch img/s",
                         "ratio": "kd_jax/pt", "host_other_busy": "busy"}


def side_by_side_table(records) -> str:
  """kd_jax and PyTorch columns per case; ratio = kd_jax img/s / PyTorch img/s."""
  return _columns_table(records, _SIDE_BY_SIDE_COLUMNS, _SIDE_BY_SIDE_HEADERS)


# ------------------------------------------------------------------------------------------------
# The paper's baseline study, estimated from measured steps.


@dataclasses.dataclass(frozen=True)
class Study:
  """5 PreResNet-56 teachers x 200 epochs, then the student 300 epochs against the 5-teacher ensemble."""
  depth: int = 56
  teachers: int = 5
  members_per_step: int = 5
  teacher_epochs: int = 200
  teacher_batch: int = 256
  student_epochs: int = 300
  student_batch: int = 128
  train_size: int = CIFAR_TRAIN_SIZE
  classes: int = 100
  precision: str = "bf16"


def study_cases(study: Study, steps: int, warmup: int) -> dict:
  """The measurements the estimate needs: one per distinct teacher group size, and the distill step."""
  sizes = {min(study.members_per_step, study.teachers - first)
           for first in range(0, study.teachers, study.members_per_step)}
  common = dict(depth=study.depth, classes=study.classes, precision=study.precision, steps=steps,
                warmup=warmup, train_size=study.train_size)
  cases = {f"teacher_{k}": Case(kind="teacher", members=k, batch=study.teacher_batch, **common)
           for k in sorted(sizes)}
  cases["distill"] = Case(kind="distill", m=study.teachers, batch=study.student_batch, **common)
  return cases


def estimate_study(study: Study, records: dict) -> dict:
  """Seconds of compute for the study: compile once per distinct program + steps x median step time.

    teachers = sum over groups g of steps_per_epoch(B_t) x E_t x step_s(teacher, |g|)
               + compile_s(teacher, k) once per distinct group size k (the jit cache reuses it)
    student  = steps_per_epoch(B_s) x E_s x step_s(distill, m) + compile_s(distill, m)

  Evaluation (one clean pass over test and train sets), checkpointing and data loading are left out.
  """
  teacher_steps = study.teacher_epochs * (study.train_size // study.teacher_batch)
  student_steps = study.student_epochs * (study.train_size // study.student_batch)
  teacher_s = 0.0
  for first in range(0, study.teachers, study.members_per_step):
    size = min(study.members_per_step, study.teachers - first)
    teacher_s += teacher_steps * records[f"teacher_{size}"]["step_ms"] / 1e3
  teacher_compile_s = sum(r["compile_s"] for name, r in records.items() if name.startswith("teacher"))
  student_s = student_steps * records["distill"]["step_ms"] / 1e3
  total = teacher_s + teacher_compile_s + student_s + records["distill"]["compile_s"]
  return {"study": dataclasses.asdict(study), "teacher_steps_per_group": teacher_steps,
          # The paper's learning rates scaled linearly with the batch (0.1 at 256, 0.05 at 128).
          "teacher_learning_rate": 0.1 * study.teacher_batch / 256,
          "student_learning_rate": 0.05 * study.student_batch / 128,
          "student_steps": student_steps, "teacher_train_s": round(teacher_s, 1),
          "teacher_compile_s": round(teacher_compile_s, 1), "student_train_s": round(student_s, 1),
          "student_compile_s": records["distill"]["compile_s"], "total_s": round(total, 1),
          "total_minutes": round(total / 60, 2), "backend": jax.default_backend(),
          "device": device_name()}


# ------------------------------------------------------------------------------------------------
# Output.

_TABLE_COLUMNS = (("kind", 8), ("depth", 5), ("m", 3), ("members", 7), ("batch", 6),
                  ("precision", 9), ("method", 7), ("compile_s", 9), ("compiles", 8),
                  ("step_ms", 9), ("images_per_second", 10), ("peak_fraction", 8),
                  ("host_other_busy", 6))
_HEADERS = {"images_per_second": "img/s", "peak_fraction": "of peak", "host_other_busy": "busy"}


def _cell(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
  return str(value)


def _columns_table(records, columns, headers) -> str:
  """Right-aligned text table: one row per record, `columns` as (key, width), `headers` renaming keys."""
  header = " ".join(f"{headers.get(k, k):>{w}}" for k, w in columns)
  lines = [header, "-" * len(header)]
  for record in records:
    lines.append(" ".join(f"{_cell(record.get(k)):>{w}}" for k, w in columns))
  return "\n".join(lines)


def table(records) -> str:
  return _columns_table(records, _TABLE_COLUMNS, _HEADERS)


def _emit(record, out_file):
  line = json.dumps(record)
  print(line, flush=True)
  if out_file:
    with open(out_file, "a") as f:
      f.write(line + "\n")


def _environment() -> dict:
  return {"event": "environment", "date": datetime.date.today().isoformat(),
          "jax": jax.__version__, "backend": jax.default_backend(), "device": device_name(),
          "devices": jax.device_count(), "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def use_flax_max_pool():
  """Makes LeNet-5 max-pool with flax's nn.max_pool again (before kd_jax.models.lenet.max_pool).

  For A/B measurements only (--max-pool flax): same values; applies to steps traced after the call.
  """
  global _max_pool_impl
  lenet._POOL["max"] = nn.max_pool  # pylint: disable=protected-access
  _max_pool_impl = "flax"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Time kd_jax's compiled distillation and teacher steps.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--kind", nargs="+", choices=KINDS, default=["distill"])
  parser.add_argument("--model", nargs="+", choices=MODELS, default=None,
                      help="default: preresnet (--side-by-side: lenet5)")
  parser.add_argument("--depth", nargs="+", type=int, default=[20])
  parser.add_argument("--m", nargs="+", type=int, default=[3], help="teachers in the ensemble")
  parser.add_argument("--members", nargs="+", type=int, default=[1],
                      help="teachers trained together in one step (--kind teacher)")
  parser.add_argument("--batch", nargs="+", type=int, default=[128], help="global batch")
  parser.add_argument("--classes", nargs="+", type=int, default=[100])
  parser.add_argument("--precision", nargs="+", choices=tuple(PRECISIONS), default=["fp32"])
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
                      help="epoch cases: run only this many steps and extrapolate (0 = whole epoch)")
  parser.add_argument("--quick", action="store_true", help="a small CPU-sized set of cases")
  parser.add_argument("--full", action="store_true", help="the issue's whole table (for a GPU)")
  parser.add_argument("--large-batch", type=int, default=1024, help="the large batch of --full")
  parser.add_argument("--side-by-side", action="store_true",
                      help="kd_jax and PyTorch teacher and distill steps of --model (default lenet5), "
                           "interleaved, with a comparison table")
  parser.add_argument("--rounds", type=int, default=5, help="--side-by-side: alternating rounds")
  parser.add_argument("--torch-channels-last", action="store_true",
                      help="--side-by-side: PyTorch in channels-last memory format")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="--side-by-side: torch.set_num_threads (0 = torch's default)")
  parser.add_argument("--torch", action="store_true",
                      help="also time benchmarks/torch_reference.py for each fp32 distill case")
  parser.add_argument("--estimate-study", action="store_true",
                      help="measure the steps of the paper's baseline study and estimate its time")
  parser.add_argument("--study-depth", type=int, default=Study.depth)
  parser.add_argument("--teacher-batch", type=int, default=Study.teacher_batch)
  parser.add_argument("--student-batch", type=int, default=Study.student_batch)
  parser.add_argument("--members-per-step", type=int, default=Study.members_per_step)
  parser.add_argument("--study-precision", choices=tuple(PRECISIONS), default=Study.precision)
  parser.add_argument("--lenet-pooling", choices=("", "avg", "max"), default="",
                      help="LeNet-5's pooling (default: the model config's, 'avg')")
  parser.add_argument("--max-pool", choices=("kd_jax", "flax"), default="kd_jax",
                      help="flax: LeNet-5 max-pools with nn.max_pool (A/B of lenet.max_pool)")
  parser.add_argument("--profile-dir", default="",
                      help="also trace 3 steps of each distill/teacher case into this folder and "
                           "print the top operations")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  if args.steps is None:
    args.steps = 10 if args.side_by_side else 20
  return args


def _torch_record(case: Case):
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  if not torch_reference.available():
    return {"kind": "torch_reference", "skipped": "torch is not installed"}
  record = torch_reference.benchmark(case.depth, case.m, case.batch, case.classes, case.steps,
                                     case.warmup)
  record.update(kind="torch_reference", compile_s=None)  # eager: nothing to compile
  return record


def main(argv=None):
  runtime.add_cpu_xla_flags()  # as run.py's setup does, before the first JAX computation
  args = parse_args(argv)
  if args.max_pool == "flax":
    use_flax_max_pool()
  _emit({**_environment(), "max_pool": args.max_pool}, args.out)
  if args.side_by_side:
    if args.torch_threads:
      from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
      if torch_reference.available():
        torch_reference.torch.set_num_threads(args.torch_threads)
    cases = side_by_side_cases(args.model or ["lenet5"], args.steps, args.warmup,
                               args.lenet_pooling)
    records = side_by_side(cases, args.rounds, torch_channels_last=args.torch_channels_last)
    for record in records:
      _emit(record, args.out)
    print(side_by_side_table(records))
    return
  if args.estimate_study:
    study = Study(depth=args.study_depth, members_per_step=args.members_per_step,
                  teacher_batch=args.teacher_batch, student_batch=args.student_batch,
                  precision=args.study_precision)
    records = {}
    for name, case in study_cases(study, args.steps, args.warmup).items():
      records[name] = run_case(case)
      _emit(records[name], args.out)
    print(table(records.values()))
    estimate = estimate_study(study, records)
    _emit({"event": "study_estimate", **estimate}, args.out)
    print(f"\nestimated study time on {estimate['device']}: {estimate['total_minutes']:.1f} min "
          f"(teachers {estimate['teacher_train_s'] / 60:.1f} + student "
          f"{estimate['student_train_s'] / 60:.1f} + compile "
          f"{(estimate['teacher_compile_s'] + estimate['student_compile_s']) / 60:.1f})")
    return
  if args.quick:
    cases = quick_cases()
  elif args.full:
    cases = full_cases(args.steps, args.large_batch)
  else:
    cases = grid(args)
  mesh = parallel.make_mesh()
  data_cache = {}
  records = []
  for case in cases:
    key = (case.train_size, case.classes, image_shape(case))
    if key not in data_cache:
      data_cache = {key: case_data(case, mesh)}
    record = run_case(case, mesh, data_cache[key])
    _emit(record, args.out)
    records.append(record)
    if args.profile_dir and case.kind != "epoch":
      name = f"{case.kind}_d{case.depth}_m{case.m}_k{case.members}_b{case.batch}_{case.precision}"
      ops = profile_case(case, os.path.join(args.profile_dir, name), mesh=mesh,
                         data=data_cache[key])
      _emit({"event": "profile", "case": name, "top_ops": ops}, args.out)
    if args.torch and case.kind == "distill" and case.precision == "fp32":
      torch_record = _torch_record(case)
      _emit(torch_record, args.out)
      records.append(torch_record)
  print(table(records))


if __name__ == "__main__":
  sys.exit(main())
