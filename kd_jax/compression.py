"""What distillation saved: the size, compute and speed of the teachers, the ensemble, the student.

For one network (or a stacked ensemble) and its inference variables, `footprint` reports
- params: the scalars in variables['params'] (a stacked ensemble: all members');
- inference_bytes: the bytes of the variables inference reads, params + batch_stats, as stored;
- flops_per_image: the forward pass's floating-point operations per example, from XLA's cost
  analysis of the compiled batch-1 program (`Compiled.cost_analysis()`; the normalization of the input is not
  part of it). XLA counts a multiply-add as 2 operations (the usual "2 x MACs" convention) but only
  over the taps of a convolution that meet the input, not its zero padding, and adds one operation
  per element for bias additions, activations and pooling; for LeNet-5 that is 832,642 against
  833,040 for 2 x MACs with padding (tests/test_compression.py counts both by hand). None where the
  backend reports no cost analysis;
- peak_memory_bytes: the compiled program's peak device memory at the evaluation batch size,
  variables included (`Compiled.memory_analysis()`), or None where the backend reports none;
- latency_batch1_s, latency_eval_batch_s: the median wall time of one forward call at batch 1 and at
  the evaluation batch size, on one device, after a warm-up call, each timed to completion
  (block_until_ready) and repeated until `seconds` have passed (at least once, at most MAX_REPEATS);
  throughput_batch1 / throughput_eval_batch: images per second at those latencies.

`compression_section` puts them together for a run's results.json, under "compression": the figures
of every teacher, the ensemble and the student, and "student_vs_ensemble": the student's figures as a
fraction of the ensemble's, the fraction of the ensemble's test accuracy it kept, and its test
agreement (the fraction of the ensemble's predictions it reproduces). `measure` is what a run calls;
it leaves the trained variables as they are (they are copied to one device) and returns None when
config.evaluation.compression is off or the run evaluates a test subset (evaluation.test_size > 0,
a smoke run), so that the figures are left out rather than zero.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import ensemble, losses
from kd_jax.models import param_count

# Each latency is the median of at most this many timed calls.
MAX_REPEATS = 50
# Seconds of timed calls per latency (after the warm-up call); a longer call is timed once.
SECONDS_PER_LATENCY = 0.25
# Figures of each role whose student / ensemble ratio "student_vs_ensemble" reports.
RATIO_KEYS = ("params", "inference_bytes", "flops_per_image", "peak_memory_bytes",
              "latency_batch1_s", "latency_eval_batch_s")


def inference_variables(variables) -> dict:
  """The variables a forward pass in eval mode reads: 'params' and, if any, 'batch_stats'."""
  return {k: variables[k] for k in ("params", "batch_stats") if k in variables and variables[k]}


def variable_bytes(variables) -> int:
  """Bytes of the inference variables as stored (each leaf's size times its dtype's item size)."""
  return int(sum(np.prod(np.shape(leaf), dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(inference_variables(variables))))


def reported_flops(compiled):
  """The 'flops' of `compiled.cost_analysis()`, or None where the backend gives none.

  Depending on the backend and JAX version the analysis is None, a dict, or a list of dicts (one
  per program, of which an inference program has one); a negative or non-finite count is treated as
  not reported.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except (best-effort by JAX's documentation)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = analysis.get("flops") if isinstance(analysis, dict) else None
  if flops is None or not np.isfinite(flops) or flops < 0:
    return None
  return float(flops)


def reported_peak_memory(compiled):
  """`compiled.memory_analysis().peak_memory_in_bytes`, or None where the backend gives none."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  peak = getattr(analysis, "peak_memory_in_bytes", None)
  return int(peak) if peak else None


def median_call_seconds(call, seconds: float = SECONDS_PER_LATENCY,
                        max_repeats: int = MAX_REPEATS) -> float:
  """The median wall time of `call()` (waited for with block_until_ready) after one warm-up call,
  over repeats until `seconds` have passed: at least one, at most `max_repeats`."""
  jax.block_until_ready(call())
  times = []
  deadline = time.perf_counter() + seconds
  while len(times) < max_repeats and (not times or time.perf_counter() < deadline):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def example_batch(example_shape, input_dtype, batch_size: int, num_tokens: int = 0):
  """A seeded batch of model inputs: standard-normal floats (standardized images), or token ids
  below `num_tokens` for an integer `input_dtype`."""
  rng = np.random.default_rng(0)
  shape = (batch_size, *example_shape)
  if jnp.issubdtype(input_dtype, jnp.integer):
    return rng.integers(0, max(num_tokens, 1), shape).astype(input_dtype)
  return rng.standard_normal(shape).astype(input_dtype)


def footprint(apply_fn, variables, example_shape, *, batch_size: int, input_dtype=jnp.float32,
              num_tokens: int = 0, seconds: float = SECONDS_PER_LATENCY, device=None) -> dict:
  """The module docstring's figures of `apply_fn(variables, x) -> logits` (x a batch of examples of
  `example_shape`), with `variables` copied to `device` (default: this process's first device).

  One program is compiled per batch size (1 and `batch_size`); a later call with variables of the
  same shapes (another member of an ensemble) reuses them.
  """
  device = device or jax.local_devices()[0]
  variables = jax.device_put(jax.device_get(inference_variables(variables)), device)
  forward = jax.jit(apply_fn)
  measured = {}
  for batch in (1, batch_size):
    x = jax.device_put(example_batch(example_shape, input_dtype, batch, num_tokens), device)
    compiled = forward.lower(variables, x).compile()
    call = lambda c=compiled, x=x: c(variables, x)  # noqa: E731
    measured[batch] = (compiled, median_call_seconds(call, seconds))
  (single, latency_1), (full, latency_b) = measured[1], measured[batch_size]
  return {"params": param_count(variables["params"]), "inference_bytes": variable_bytes(variables),
          "flops_per_image": reported_flops(single),
          "peak_memory_bytes": reported_peak_memory(full),
          "eval_batch_size": int(batch_size),
          "latency_batch1_s": latency_1, "throughput_batch1": 1 / latency_1,
          "latency_eval_batch_s": latency_b, "throughput_eval_batch": batch_size / latency_b}


def study_footprints(teacher, teacher_variables, student, student_variables, example_shape, *,
                     batch_size: int, method: str = "auto", seconds: float = SECONDS_PER_LATENCY
                     ) -> dict:
  """{'teachers': [footprint of each member], 'ensemble': .., 'student': ..} of a run's models:
  `teacher_variables` stacked (a leading member axis), the ensemble's output the log of its members'
  mean softmax (losses.ensemble_log_probs, the distillation target), its members run by `method`
  (kd_jax/ensemble.py) as in evaluation."""
  input_dtype = getattr(student, "input_dtype", jnp.float32)
  common = dict(batch_size=batch_size, input_dtype=input_dtype, seconds=seconds,
                num_tokens=getattr(student, "num_tokens", 0))

  def member_forward(variables, x):
    return teacher.apply(variables, x, train=False)

  def ensemble_forward(stacked, x):
    return losses.ensemble_log_probs(ensemble.member_logits(teacher, stacked, x, method))

  stacked = inference_variables(teacher_variables)
  return {
      "teachers": [footprint(member_forward, ensemble.member(stacked, i), example_shape, **common)
                   for i in range(ensemble.num_members(stacked))],
      "ensemble": footprint(ensemble_forward, stacked, example_shape, **common),
      "student": footprint(lambda v, x: student.apply(v, x, train=False), student_variables,
                           example_shape, **common),
  }


def _ratio(numerator, denominator):
  if numerator is None or denominator is None or not denominator:
    return None
  return numerator / denominator


def compression_section(footprints: dict, results: dict) -> dict:
  """results.json's "compression": `footprints` (study_footprints') and "student_vs_ensemble", from
  them and from the run's `results` (its test accuracy and agreement; None where absent)."""
  student, ensemble_figures = footprints["student"], footprints["ensemble"]
  versus = {key: _ratio(student.get(key), ensemble_figures.get(key)) for key in RATIO_KEYS}
  versus["accuracy_kept"] = _ratio(results.get("student", {}).get("test_accuracy"),
                                   results.get("ensemble", {}).get("test_accuracy"))
  versus["test_agreement"] = results.get("student", {}).get("test_agreement")
  return {**footprints, "student_vs_ensemble": versus}


def enabled(config) -> bool:
  """Whether a run measures compression: config.evaluation.compression (default on), and not on a
  test subset (evaluation.test_size > 0, a smoke run)."""
  return bool(config.evaluation.get("compression", True)) and not config.evaluation.test_size


def measure(config, teacher, teacher_variables, student, student_variables, example_shape,
            results: dict):
  """The run's "compression" section (compression_section), or None when `enabled` says no.

  `results` is the run's evaluated results (for what the student kept); the ensemble is measured as
  config.ensemble_method runs it. The evaluation batch is config.eval_batch_size shared by the
  devices of the run, so one device's share of it is measured (all of it on a single device).
  """
  if not enabled(config):
    return None
  start = time.perf_counter()
  batch_size = max(1, config.eval_batch_size // jax.device_count())
  footprints = study_footprints(teacher, teacher_variables, student, student_variables,
                                tuple(example_shape), batch_size=batch_size,
                                method=config.ensemble_method)
  section = compression_section(footprints, results)
  print(f"[compression] sizes, FLOPs and latencies measured in {time.perf_counter() - start:.1f}s",
        flush=True)
  return section
