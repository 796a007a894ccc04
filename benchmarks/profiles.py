"""Where a step's time goes: a few steps of a case traced, and the trace's top operations.

  ops = profile_case(case, "/tmp/trace")   # [{"op", "ms_per_step", "calls_per_step"}, ...]

The trace on disk opens in TensorBoard or Perfetto; `summarize_trace` reads it back with jax's
(private, so optional) ProfileData reader.
"""

import glob
import os
import re

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness
from kd_jax import parallel

# Trace lines that hold no device work: Python, the host waiting on the executor, the profiler's
# bookkeeping.
IDLE_EVENTS = ("ThunkExecutor", "end:", "$", "SlinkyThreadPool")


def profile_case(case: cases_lib.Case, directory: str, num_steps: int = 3, mesh=None, data=None,
                 top: int = 15) -> list:
  """Traces `num_steps` steps of a distill/teacher case into `directory` (TensorBoard/Perfetto).

  Returns the `top` operations by total time per step, from the trace's device lines (XLA:CPU's
  worker threads, or the GPU's streams): [{"op", "ms_per_step", "calls_per_step"}]. Operation names
  lose their numeric suffix (fusion.12 -> fusion) so that repeated layers add up. XLA:CPU runs some
  library convolutions asynchronously, outside the traced span of their op: the list then
  undercounts them, and the step time minus the listed total is a lower bound of their share.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  data = cases_lib.case_data(case, mesh) if data is None else data
  built = cases_lib.build(case, mesh, data)
  _, _, args = harness.time_steps(built.step, built.args, 0, warmup=2)
  with jax.profiler.trace(directory):
    harness.time_steps(built.step, args, num_steps, warmup=0)
  return summarize_trace(directory, num_steps, top)


def summarize_trace(directory: str, num_steps: int, top: int) -> list:
  """The `top` device operations of the newest trace in `directory` (see `profile_case`); [] when
  there is no trace or no reader for it."""
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
        if event.name.startswith(IDLE_EVENTS):
          continue
        name = re.sub(r"\.\d+$", "", event.name)
        totals[name] = totals.get(name, 0) + event.duration_ns
        calls[name] = calls.get(name, 0) + 1
  ranked = sorted(totals, key=totals.get, reverse=True)[:top]
  return [{"op": name, "ms_per_step": round(totals[name] / num_steps / 1e6, 2),
           "calls_per_step": calls[name] // num_steps} for name in ranked]
