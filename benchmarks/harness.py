"""What every benchmark here measures with: timing, compile counting, host load, JSON lines, tables.

  with CompileCounter() as compiles:             # XLA compilations inside the block
    times, dispatch, args = time_steps(step, args, num_steps=20, warmup=3)
  before = cpu_jiffies(); ...; other_busy_fraction(before, cpu_jiffies())  # others' share of cores
  emit(record, out_file)                         # one JSON line on stdout (and appended to a file)
  print(columns_table(records, (("kind", 8), ("step_ms", 9)), {"step_ms": "ms"}))

Nothing here knows kd_jax's steps: a step is any function of (state, *rest) that returns (state,
metrics), as the library's compiled steps are.
"""

import datetime
import json
import os
import platform
import statistics
import time

import jax

# ------------------------------------------------------------------------------------------------
# Timing.


def call_seconds(fn, count: int) -> list:
  """Seconds of each of `count` calls of fn() (fn itself waits for its results, if it must)."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def milliseconds(times) -> dict:
  """{"median_ms", "min_ms"} of a list of seconds, rounded to 0.01 ms."""
  return {"median_ms": round(statistics.median(times) * 1e3, 2),
          "min_ms": round(min(times) * 1e3, 2)}


def time_calls(fn, repeats: int) -> dict:
  """milliseconds() of `repeats` calls of fn() after an untimed call (compiling, first calls)."""
  fn()
  return milliseconds(call_seconds(fn, repeats))


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


# ------------------------------------------------------------------------------------------------
# Compilation counting.

# jax.monitoring reports this event once per executable jax asks XLA for (a persistent-cache hit
# counts too): exactly what a retrace would add, whether or not a compilation cache is configured.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_seconds = []
_listening = False


def _on_duration(event, duration, **unused_kwargs):
  if event == BACKEND_COMPILE_EVENT:
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
# The machine and the load on it.


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
  """JAX's first device: its kind (e.g. 'NVIDIA H100 80GB HBM3'); on CPU the CPU model and cores."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{_cpu_model()} ({os.cpu_count()} logical cores)"
  return device.device_kind


def jax_environment() -> dict:
  """The fields that say where a JAX measurement ran."""
  return {"backend": jax.default_backend(), "device": device_name(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def environment() -> dict:
  """The first JSON line of a benchmark run: date, versions, devices, XLA flags."""
  return {"event": "environment", "date": datetime.date.today().isoformat(),
          "jax": jax.__version__, **jax_environment(), "devices": jax.device_count(),
          "python": platform.python_version()}


def cpu_jiffies():
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
  """Share of all cores' time used by other processes between two `cpu_jiffies` samples."""
  if start is None or end is None or end[2] == start[2]:
    return None
  others = (end[0] - start[0]) - (end[1] - start[1])
  return round(max(others, 0) / (end[2] - start[2]), 3)


# ------------------------------------------------------------------------------------------------
# Output.


def emit(record: dict, out_file: str = "") -> None:
  """Prints `record` as one JSON line, and appends it to `out_file` when one is given."""
  line = json.dumps(record)
  print(line, flush=True)
  if out_file:
    with open(out_file, "a") as f:
      f.write(line + "\n")


def cell(value) -> str:
  """A table cell: '-' for None, 4 significant digits below 1, one decimal from 1 on."""
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
  return str(value)


def columns_table(records, columns, headers) -> str:
  """Right-aligned text table: a row per record, `columns` as (key, width), `headers` renaming."""
  header = " ".join(f"{headers.get(k, k):>{w}}" for k, w in columns)
  lines = [header, "-" * len(header)]
  for record in records:
    lines.append(" ".join(f"{cell(record.get(k)):>{w}}" for k, w in columns))
  return "\n".join(lines)
