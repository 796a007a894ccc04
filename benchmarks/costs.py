"""What XLA says a compiled step costs (FLOPs, planned memory), and the device's peak to read it by.

FLOPs per step come from XLA's cost analysis of the lowered step; the fraction of the device's peak
is given where the peak is known (PEAK_TFLOPS). Each function returns None where the backend does
not say (XLA:CPU has no memory statistics, and not every backend implements every analysis).
"""

import jax

# Dense peak TFLOP/s by device kind (substring of jax's device_kind) and compute dtype. The fp32
# entry is the TF32 tensor-core peak, because JAX's default matmul/conv precision lets XLA use TF32
# for fp32 on these GPUs. More specific names first (an 'H100 PCIe' must not match the SXM 'H100').
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.4, "fp32": 494.7}),
    ("H200", {"bf16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
)


def peak_tflops(precision: str):
  """The first device's dense peak TFLOP/s at `precision` ('fp32' | 'bf16'), or None if unknown."""
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS:
    if name in kind:
      return peaks[precision]
  return None


def peak_memory_bytes():
  """The first device's peak bytes in use since the process started (GPU/TPU), or None."""
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def compiled_memory_bytes(compiled):
  """Arguments + outputs + temporaries that XLA planned for the step (aliased buffers once)."""
  try:
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  except Exception:  # Not every backend implements memory analysis.
    return None


def step_flops(lowered):
  """FLOPs of one call of a lowered step, from XLA's cost analysis."""
  try:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, list):
      analysis = analysis[0]
    return float(analysis["flops"])
  except Exception:  # Not every backend implements cost analysis.
    return None


def flops_fields(flops, step_s, precision: str) -> dict:
  """A record's FLOP fields: per step, achieved TFLOP/s at `step_s` a step, peak, its fraction."""
  achieved = flops / step_s / 1e12 if flops and step_s else None
  peak = peak_tflops(precision)
  return {"flops_per_step": flops,
          "achieved_tflops": round(achieved, 4) if achieved else None,
          "peak_tflops": peak,
          "peak_fraction": round(achieved / peak, 4) if achieved and peak else None}
