"""One case (benchmarks/cases.py) measured: its record, a JSON-ready dict (keys: see RECORD_KEYS).

  record = run_case(Case(kind="distill", depth=20, m=3, batch=128))

Timing: each step is compiled ahead of time (`jit(...).lower(...).compile()`, which also fills the
jit cache, so the steps then run through the ordinary jit call path as a run's do), then
`case.warmup` untimed steps, then `case.steps` timed steps, each ended by `block_until_ready`;
`step_ms` is their median. Compilations are counted over the whole measured phase (compile + warm-up
+ timed steps); `compiles` should be 1: more means some step retraced. On CPU the record also says
how busy the rest of the machine was while the steps were timed (`host_other_busy`), because on a
shared machine that, not the code, can decide the number.

An epoch case runs one end-to-end epoch of the distill step driven like `kd_jax.loop.fit`
(asynchronous, metrics fetched every 100 steps) on the in-memory train set, plus the input part
alone (batch gather + augmentation + normalize), so the input's share of an epoch shows.
"""

import statistics
import time

import jax

from benchmarks import cases as cases_lib
from benchmarks import costs, harness
from kd_jax import ensemble, parallel, train
from kd_jax.data import augment as augment_lib
from kd_jax.errors import KdJaxError

RECORD_KEYS = ("kind", "backend", "device", "model", "depth", "m", "members", "batch", "classes",
               "precision", "method", "steps", "compile_s", "trace_s", "compiles", "step_ms",
               "step_ms_min", "images_per_second", "flops_per_step", "achieved_tflops",
               "peak_tflops", "peak_fraction", "peak_memory_bytes", "compiled_memory_bytes")


def base_record(case: cases_lib.Case) -> dict:
  """What every record of `case` holds before its measurements."""
  return {**harness.jax_environment(), **cases_lib.describe(case), "devices": jax.device_count(),
          "precision": case.precision, "method": ensemble.resolve_method(case.method),
          "steps": case.steps, "train_size": case.train_size, "cached_logits": case.cached_logits}


def _rounded_ms(seconds, digits: int = 2):
  return round(seconds * 1e3, digits) if seconds is not None else None


def measure_step(case: cases_lib.Case, mesh, data) -> dict:
  """Compile, warm up and time one distill or teacher case; returns its record.

  With case.steps == 0 the step is only compiled (FLOPs, compile time and XLA's planned memory,
  no timing): how to size a case that would take too long to run on this machine.
  """
  built = cases_lib.build(case, mesh, data)
  times, dispatch = [], []
  with harness.CompileCounter() as counter:
    start = time.perf_counter()
    lowered = built.step.lower(*built.args)
    trace_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    before = harness.cpu_jiffies()
    if case.steps:
      times, dispatch, _ = harness.time_steps(built.step, built.args, case.steps, case.warmup)
    after = harness.cpu_jiffies()
  step_s = statistics.median(times) if times else None
  record = base_record(case)
  record.update(
      compile_s=round(compile_s, 2), trace_s=round(trace_s, 2), compiles=counter.count,
      step_ms=_rounded_ms(step_s), step_ms_min=_rounded_ms(min(times) if times else None),
      dispatch_ms=_rounded_ms(statistics.median(dispatch) if times else None, 3),
      images_per_second=round(cases_lib.images_per_step(case) / step_s, 1) if times else None,
      # The device's peak since the process started (GPU/TPU): run a memory case on its own.
      peak_memory_bytes=costs.peak_memory_bytes(),
      compiled_memory_bytes=costs.compiled_memory_bytes(compiled),
      host_other_busy=harness.other_busy_fraction(before, after) if times else None)
  if built.cache_s is not None:
    record["cache_s"] = round(built.cache_s, 3)
  record.update(costs.flops_fields(costs.step_flops(lowered), step_s, case.precision))
  return record


def measure_input(case: cases_lib.Case, mesh, data, repeats: int = 20) -> float:
  """Median seconds of the step's input part alone: batch gather + augmentation + normalize."""
  augment = cases_lib.distillation_policy(case)
  dtype = cases_lib.PRECISIONS[case.precision]

  @jax.jit
  def batch_input(rng, step, data):
    images, labels = train.sample_batch(rng, step, data.train_images, data.train_labels, case.batch)
    x = augment_lib.normalize(augment(jax.random.fold_in(rng, step), images), data.mean, data.std,
                              dtype)
    return parallel.shard_batch(x, mesh), labels

  rng = jax.random.PRNGKey(0)
  steps = iter(range(repeats + 1))
  fn = lambda: jax.block_until_ready(batch_input(rng, next(steps), data))  # noqa: E731
  fn()  # compile
  return statistics.median(harness.call_seconds(fn, repeats))


def _run_epoch(built, num_steps: int, log_every: int):
  """Seconds of `num_steps` distill steps run as the training loop runs them (asynchronously, the
  metrics fetched every `log_every` steps), after one step that warms the epoch up."""
  args = built.args
  args[0], step_metrics = built.step(*args)
  jax.block_until_ready(step_metrics)
  start = time.perf_counter()
  with jax.transfer_guard("disallow"):  # explicit device_get (the logging) stays allowed
    for i in range(1, num_steps + 1):
      args[0], step_metrics = built.step(*args)
      if i % log_every == 0:
        jax.device_get(step_metrics)  # the pipeline's logging sync
    jax.block_until_ready((args[0], step_metrics))
  return time.perf_counter() - start


def measure_epoch(case: cases_lib.Case, mesh, data, log_every: int = 100) -> dict:
  """One epoch of the distill step driven as kd_jax.loop.fit drives it, and the input part alone."""
  built = cases_lib.build_distill(case, mesh, data)
  steps_per_epoch = case.train_size // case.batch
  num_steps = min(case.epoch_steps or steps_per_epoch, steps_per_epoch)
  with harness.CompileCounter() as counter:
    start = time.perf_counter()
    compiled = built.step.lower(*built.args).compile()
    compile_s = time.perf_counter() - start
    before = harness.cpu_jiffies()
    run_s = _run_epoch(built, num_steps, log_every)
    after = harness.cpu_jiffies()
  input_s = measure_input(case, mesh, data)
  step_s = run_s / num_steps
  record = base_record(case)
  record.update(
      steps=num_steps, steps_per_epoch=steps_per_epoch, compile_s=round(compile_s, 2),
      compiles=counter.count, run_s=round(run_s, 2),
      # A partial epoch (--epoch-steps) is extrapolated from its mean step.
      epoch_s=round(step_s * steps_per_epoch, 2), full_epoch=num_steps == steps_per_epoch,
      step_ms=_rounded_ms(step_s), images_per_second=round(case.batch / step_s, 1),
      input_ms=_rounded_ms(input_s), input_fraction=round(input_s / step_s, 4),
      peak_memory_bytes=costs.peak_memory_bytes(),
      compiled_memory_bytes=costs.compiled_memory_bytes(compiled),
      host_other_busy=harness.other_busy_fraction(before, after))
  return record


def run_case(case: cases_lib.Case, mesh=None, data=None) -> dict:
  """Measures one case (building the synthetic data if not given); returns its JSON-ready record."""
  if case.kind not in cases_lib.KINDS:
    raise ValueError(f"kind {case.kind!r} is not one of {cases_lib.KINDS}")
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(case.batch, mesh, "--batch")
  if case.batch > case.train_size:
    raise KdJaxError(f"--batch {case.batch} exceeds the {case.train_size} synthetic training "
                     "images (--train-size); lower it.")
  if data is None:
    data = cases_lib.case_data(case, mesh)
  if case.kind == "epoch":
    return measure_epoch(case, mesh, data)
  return measure_step(case, mesh, data)


TABLE_COLUMNS = (("kind", 8), ("depth", 5), ("m", 3), ("members", 7), ("batch", 6),
                 ("precision", 9), ("method", 7), ("compile_s", 9), ("compiles", 8),
                 ("step_ms", 9), ("images_per_second", 10), ("peak_fraction", 8),
                 ("host_other_busy", 6))
TABLE_HEADERS = {"images_per_second": "img/s", "peak_fraction": "of peak",
                 "host_other_busy": "busy"}


def table(records) -> str:
  """One row per record: the case and its compile and step times."""
  return harness.columns_table(records, TABLE_COLUMNS, TABLE_HEADERS)


METHOD_COLUMNS = (("distill_method", 14), ("batch", 5), ("compile_s", 9), ("compiles", 8),
                  ("step_ms", 9), ("step_ms_min", 9), ("relative_to_kd", 8),
                  ("images_per_second", 8), ("host_other_busy", 6))
METHOD_HEADERS = {"distill_method": "method", "step_ms_min": "min_ms",
                  "relative_to_kd": "vs kd", "images_per_second": "img/s",
                  "host_other_busy": "busy"}


def method_table(records) -> str:
  """One row per distillation method: its compile and step times, and its step over kd's."""
  return harness.columns_table(records, METHOD_COLUMNS, METHOD_HEADERS)
