"""The GPU checklist in one command: each measurement docs/performance.md asks of a GPU, timed.

  bash benchmarks/device_check.sh                    # on a machine with one GPU: < 8 minutes
  bash benchmarks/device_check.sh /tmp/dc --smoke    # the same parts at tiny sizes, on a CPU
  bash benchmarks/device_check.sh OUT --wheels wheels/       # first installs the wheels in wheels/
  bash benchmarks/device_check.sh OUT --parts methods --limit methods=300   # one part, more time

Each part is one command (mostly `python -m benchmarks.kd_step ...`), run in its own process with
its own time limit, so one slow part cannot eat the window; the parts share one overall budget
(--budget, default 470 s), and a part only gets what the budget has left. A part's JSON lines go
to OUT/<part>.jsonl as each case is measured (a part stopped by its limit keeps the cases it
finished), its whole output to the terminal and to OUT/<part>.log. A failed part does not stop the
others; at the end, OUT/parts.jsonl holds one line per part (its command, status, seconds, number
of records), OUT/summary.txt the summary table (parts, then every measured step), and the exit
status is 1 if any part failed, timed out, fell short of its records or was skipped.

Parts, in the order they run (GPU sizes; --smoke shrinks every model, batch and step count):

  imports         the packages the parts import (those missing are named, with the wheels to carry),
                  and the devices JAX sees; on a GPU run, no GPU fails it and skips the rest
  memory          5 x PreResNet-56 bf16, the fused distillation step at batch 128 and 1024, in a
                  fresh process: peak_memory_bytes (the device's peak) and XLA's planned bytes
  estimate        --estimate-study: the paper's baseline study's steps, timed, and its minutes
  methods         unroll / vmap / scan for the same 5-teacher step (batch 128, 1024): the data for
                  ensemble_method='auto' on GPUs
  side_by_side_lenet5, side_by_side_preresnet
                  kd_jax's and PyTorch's (CUDA where available) teacher and distillation steps
  steps_d20, steps_d56
                  the step table: PreResNet-20 / -56, m 1/3/5, batch 128/1024, fp32/bf16

Compilation: the parts from memory to side_by_side_preresnet share a persistent compilation cache
(a fresh temporary folder per check, removed at the end), so a program an earlier part compiled is
read back, not compiled again (their compile_s for such a program is the cache's). Each step-table
part, last, has a fresh cache of its own: programs its cases share (the train-state
initializations) are read back, and every step it times is compiled for real (its compile_s are
compile times).

This module imports no JAX itself (a broken JAX install is reported by the imports part, not hit
here). The machine needs jax (with its GPU plugin), flax, optax, orbax-checkpoint, ml-collections,
numpy, pillow, absl-py and PyYAML; torch only for the PyTorch columns. tensorflow-datasets, grain
and tensorboardX are never imported by these parts (the imports part checks the benchmark modules'
imports; tests/test_device_check.py runs every part without them).
"""

import argparse
import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = "device_check_out"
DEFAULT_BUDGET_S = 470  # the whole check stays under 8 minutes
SMOKE_BUDGET_S = 1200  # a loaded 2-core CPU
MIN_START_S = 5  # when the budget has less than this left, the remaining parts are skipped
KILL_GRACE_S = 10  # after its limit a part gets SIGTERM, then SIGKILL this much later

@dataclasses.dataclass(frozen=True)
class Part:
  """One command of the check: its kd_step flags (or `module`), time limit and expected records."""
  name: str
  args: tuple
  limit_s: int
  records: int  # JSON lines it should write, its environment line aside
  # The persistent compilation cache it reads and fills: "shared" by the parts that say so, or its
  # "own" (see the module docstring).
  cache: str = "shared"
  module: str = "benchmarks.kd_step"

  def command(self, python: str, out_file: str, extra: tuple = ()) -> list:
    return [python, "-m", self.module, *self.args, "--out", out_file, *extra]


def _grid(depth, ms, batches, precisions, steps, warmup, train=()):
  return ("--depth", str(depth), "--m", *map(str, ms), "--batch", *map(str, batches),
          "--precision", *precisions, "--steps", str(steps), "--warmup", str(warmup), *train)


def gpu_parts() -> list:
  """The check at the sizes of docs/performance.md's GPU questions."""
  timing = ("--steps", "5", "--warmup", "2")
  return [
      Part("imports", ("--require-gpu",), 90, 1, module="benchmarks.device_check_imports"),
      Part("memory", _grid(56, (5,), (128, 1024), ("bf16",), 3, 1), 90, 2),
      Part("estimate", ("--estimate-study", *timing), 90, 3),
      Part("methods", _grid(56, (5,), (128, 1024), ("bf16",), 5, 2)
           + ("--method", "unroll", "vmap", "scan"), 120, 6),
      Part("side_by_side_lenet5", ("--side-by-side", "--steps", "10", "--rounds", "3",
                                   "--warmup", "2"), 60, 3),
      Part("side_by_side_preresnet", ("--side-by-side", "--model", "preresnet", "--steps", "10",
                                      "--rounds", "3", "--warmup", "2"), 75, 2),
      Part("steps_d20", _grid(20, (1, 3, 5), (128, 1024), ("fp32", "bf16"), 5, 2), 100, 12,
           cache="own"),
      Part("steps_d56", _grid(56, (1, 3, 5), (128, 1024), ("fp32", "bf16"), 5, 2), 150, 12,
           cache="own"),
  ]


def smoke_parts() -> list:
  """The same parts at CPU sizes (PreResNet-8, 1-2 teachers, tiny batches and train sets, 1 timed
  step): that every part runs and writes its records, in a few minutes on 2 cores."""
  tiny = ("--classes", "10", "--train-size", "64")
  return [
      Part("imports", (), 90, 1, module="benchmarks.device_check_imports"),
      Part("memory", _grid(8, (2,), (8,), ("bf16",), 1, 0, tiny), 120, 1),
      Part("estimate", ("--estimate-study", "--study-depth", "8", "--teacher-batch", "8",
                        "--student-batch", "8", "--members-per-step", "1", "--steps", "1",
                        "--warmup", "0"), 150, 3),
      Part("methods", _grid(8, (2,), (8,), ("fp32",), 1, 0, tiny)
           + ("--method", "unroll", "vmap", "scan"), 150, 3),
      Part("side_by_side_lenet5", ("--side-by-side", "--steps", "1", "--rounds", "1",
                                   "--warmup", "1"), 120, 3),
      Part("side_by_side_preresnet", ("--side-by-side", "--model", "preresnet", "--depth", "8",
                                      "--steps", "1", "--rounds", "1", "--warmup", "1"), 150, 2),
      Part("steps_d20", _grid(8, (1,), (8,), ("fp32", "bf16"), 1, 0, tiny), 120, 2, cache="own"),
      Part("steps_d56", _grid(8, (2,), (8,), ("fp32",), 1, 0, tiny), 120, 1, cache="own"),
  ]


# ------------------------------------------------------------------------------------------------
# Running one part.


@dataclasses.dataclass
class Outcome:
  """What became of a part."""
  name: str
  status: str  # ok | failed | timeout | incomplete | skipped
  command: list
  seconds: float = 0.0
  returncode: Optional[int] = None
  records: int = 0
  expected: int = 0
  note: str = ""


def read_records(path: str) -> list:
  """A part's JSON lines, its environment line aside (a torn last line, if it was killed, too)."""
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get("event") != "environment":
          records.append(record)
  return records


def _copy_output(pipe, log_file):
  for line in iter(pipe.readline, ""):
    sys.stdout.write(line)
    sys.stdout.flush()
    log_file.write(line)
    log_file.flush()


def _stop_group(process) -> None:
  """SIGTERM to the part's process group, SIGKILL if it is still there KILL_GRACE_S later."""
  for signum, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
    try:
      os.killpg(process.pid, signum)
    except ProcessLookupError:
      return
    try:
      process.wait(timeout=wait_s)
      return
    except subprocess.TimeoutExpired:
      continue


def run_part(part: Part, command: list, out_dir: str, limit_s: float, env: dict) -> Outcome:
  """Runs one part's command for at most `limit_s` seconds, its output tee'd to OUT/<part>.log."""
  jsonl, log = (os.path.join(out_dir, f"{part.name}.{ext}") for ext in ("jsonl", "log"))
  for path in (jsonl, log):
    if os.path.exists(path):
      os.remove(path)  # kd_step appends: a rerun into the same folder starts afresh
  print(f"\n=== {part.name} (limit {limit_s:.0f}s): {' '.join(command)}", flush=True)
  start = time.time()
  with open(log, "w") as log_file:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    copier = threading.Thread(target=_copy_output, args=(process.stdout, log_file), daemon=True)
    copier.start()
    timed_out = False
    try:
      process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
      timed_out = True
      _stop_group(process)
    except KeyboardInterrupt:
      _stop_group(process)
      raise
    finally:
      copier.join(timeout=5)
  outcome = Outcome(part.name, "ok", command, round(time.time() - start, 1), process.returncode,
                    len(read_records(jsonl)), part.records)
  if timed_out:
    outcome.status, outcome.note = "timeout", f"stopped after {limit_s:.0f}s"
  elif process.returncode != 0:
    outcome.status, outcome.note = "failed", f"exit status {process.returncode}"
  elif outcome.records < part.records:
    outcome.status = "incomplete"
  return outcome


# ------------------------------------------------------------------------------------------------
# The summary.


def _gb(value) -> str:
  return f"{value / 1e9:.2f} GB" if value else "-"


def _ms(value) -> str:
  return f"{value:.2f}" if value is not None else "-"


def highlight(name: str, records: list) -> str:
  """The part's result in a few words, from its records."""
  if not records:
    return ""
  if name == "imports":
    r = records[0]
    missing = r.get("missing", []) + r.get("problems", [])
    return (f"{r.get('backend')} x{r.get('device_count')} {r.get('device_kind')}"
            + (f"; MISSING/PROBLEMS: {', '.join(missing)}" if missing else ""))
  if name == "memory":
    return "; ".join(f"b{r.get('batch')} peak {_gb(r.get('peak_memory_bytes'))} (planned "
                     f"{_gb(r.get('compiled_memory_bytes'))})" for r in records)
  if name == "estimate":
    estimates = [r for r in records if r.get("event") == "study_estimate"]
    return f"study {estimates[0]['total_minutes']} min" if estimates else ""
  if name == "methods":
    return "; ".join(f"b{r.get('batch')} {r.get('method')} {_ms(r.get('step_ms'))} ms"
                     for r in records)
  if name.startswith("side_by_side"):
    return "; ".join(f"{r.get('kind')} {_ms(r.get('jax_step_ms'))} ms"
                     + (f" (PyTorch {_ms(r.get('torch_step_ms'))})" if r.get("ratio") else "")
                     for r in records)
  retraced = sum(1 for r in records if (r.get("compiles") or 0) > 1)
  return f"{len(records)} cases" + (f", {retraced} retraced" if retraced else "")


STEP_COLUMNS = (("part", 22), ("model", 9), ("kind", 7), ("depth", 5), ("m", 2), ("members", 7),
                ("batch", 5), ("precision", 9), ("method", 6), ("compile_s", 9), ("step_ms", 9),
                ("images_per_second", 10), ("peak_fraction", 7), ("peak_memory_bytes", 7),
                ("torch_step_ms", 8))
STEP_HEADERS = {"images_per_second": "img/s", "peak_fraction": "of peak",
                "peak_memory_bytes": "peak GB", "torch_step_ms": "torch ms"}
# A side-by-side record's kd_jax fields, under the names of the other parts' records.
SIDE_BY_SIDE_FIELDS = {"compile_s": "jax_compile_s", "step_ms": "jax_step_ms",
                       "images_per_second": "jax_images_per_second"}


def _cell(key, value) -> str:
  if value is None:
    return "-"
  if key == "peak_memory_bytes":
    return f"{value / 1e9:.2f}"
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
  return str(value)


def step_table(rows) -> str:
  """One line per measured step of every part: (part name, record) pairs."""
  header = " ".join(f"{STEP_HEADERS.get(k, k):>{w}}" for k, w in STEP_COLUMNS)
  lines = [header, "-" * len(header)]
  for part, record in rows:
    values = {**record, "part": part}
    if record.get("event") == "side_by_side":
      values.update({key: record.get(field) for key, field in SIDE_BY_SIDE_FIELDS.items()},
                    precision="fp32")
    lines.append(" ".join(f"{_cell(k, values.get(k)):>{w}}" for k, w in STEP_COLUMNS))
  return "\n".join(lines)


def summary(outcomes, out_dir: str) -> str:
  """The parts table, then every step any part measured."""
  lines = [f"{'part':<23} {'status':<10} {'seconds':>7} {'records':>8}  result", "-" * 100]
  steps = []
  for o in outcomes:
    records = read_records(os.path.join(out_dir, f"{o.name}.jsonl"))
    result = highlight(o.name, records)
    lines.append(f"{o.name:<23} {o.status:<10} {o.seconds:>7.1f} {o.records:>4}/{o.expected:<3}  "
                 + "; ".join(x for x in (o.note, result) if x))
    steps += [(o.name, r) for r in records if "step_ms" in r or "jax_step_ms" in r]
  failed = [o.name for o in outcomes if o.status != "ok"]
  lines.append("-" * 100)
  lines.append(f"{len(outcomes) - len(failed)}/{len(outcomes)} parts ok"
               + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; results in {out_dir}")
  if steps:
    lines += ["", step_table(steps)]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The command line.


def _install_wheels(wheels: str) -> str:
  """Installs every wheel in `wheels` (no index, no dependencies) into a temporary folder; returns
  the folder, for PYTHONPATH."""
  files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
  if not files:
    raise SystemExit(f"error: no *.whl files in --wheels {wheels}")
  target = tempfile.mkdtemp(prefix="kd_jax_wheels_")
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                  "--target", target, *files], check=True)
  return target


def _part_env(part: Part, base: dict, cache_root: str) -> dict:
  """The part's environment: unbuffered output, its persistent compilation cache."""
  cache = os.path.join(cache_root, "shared" if part.cache == "shared" else part.name)
  return {**base, "PYTHONUNBUFFERED": "1", "JAX_COMPILATION_CACHE_DIR": cache}


def _key_values(items, what: str, cast: Callable) -> dict:
  result = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"error: {what} {item!r} is not NAME=VALUE")
    result[key] = cast(value)
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Runs the GPU checklist (docs/performance.md) as separately timed parts.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("out", nargs="?", default=None,
                      help=f"results folder (default: $OUT, else ./{DEFAULT_OUT})")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and 1 step per case (a CPU check of the check itself)")
  parser.add_argument("--parts", nargs="+", default=None, help="run only these parts, in order")
  parser.add_argument("--budget", type=float, default=None,
                      help=f"seconds for all parts together (default {DEFAULT_BUDGET_S}; "
                           f"--smoke: {SMOKE_BUDGET_S})")
  parser.add_argument("--limit", action="append", metavar="PART=SECONDS",
                      help="another time limit for one part (repeatable)")
  parser.add_argument("--part-args", action="append", metavar="PART=ARGS",
                      help="extra arguments appended to one part's command (repeatable)")
  parser.add_argument("--wheels", default="",
                      help="a folder of wheels (e.g. ml_collections's) to install first")
  parser.add_argument("--python", default=sys.executable, help="the Python that runs the parts")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  out_dir = os.path.abspath(args.out or os.environ.get("OUT") or DEFAULT_OUT)
  os.makedirs(out_dir, exist_ok=True)
  parts = smoke_parts() if args.smoke else gpu_parts()
  budget = args.budget or (SMOKE_BUDGET_S if args.smoke else DEFAULT_BUDGET_S)
  by_name = {p.name: p for p in parts}
  limits = _key_values(args.limit, "--limit", float)
  extra = _key_values(args.part_args, "--part-args", lambda v: tuple(v.split()))
  chosen = args.parts or [p.name for p in parts]
  unknown = sorted({name for name in (*chosen, *limits, *extra) if name not in by_name})
  if unknown:
    raise SystemExit(f"error: unknown part(s) {', '.join(unknown)}; parts are "
                     f"{', '.join(by_name)}")
  env = dict(os.environ)
  if args.wheels:
    target = _install_wheels(args.wheels)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (target, env.get("PYTHONPATH")) if x)
  cache_root = tempfile.mkdtemp(prefix="kd_jax_device_check_cache_")
  deadline = time.time() + budget
  outcomes, skip_reason = [], ""
  print(f"device check: {', '.join(chosen)} into {out_dir} (budget {budget:.0f}s)", flush=True)
  try:
    for name in chosen:
      part = by_name[name]
      command = part.command(args.python, os.path.join(out_dir, f"{name}.jsonl"),
                             extra.get(name, ()))
      left_s = deadline - time.time()
      limit_s = min(limits.get(name, part.limit_s), left_s)
      if skip_reason or left_s < MIN_START_S:
        outcomes.append(Outcome(name, "skipped", command, expected=part.records,
                                note=skip_reason or "the budget is spent"))
        continue
      outcomes.append(run_part(part, command, out_dir, limit_s, _part_env(part, env, cache_root)))
      if name == "imports" and outcomes[-1].status != "ok":
        skip_reason = "the imports part failed"
  except KeyboardInterrupt:
    print("\ninterrupted: the summary of the parts that ran follows", flush=True)
  finally:
    shutil.rmtree(cache_root, ignore_errors=True)
  with open(os.path.join(out_dir, "parts.jsonl"), "w") as f:
    for outcome in outcomes:
      f.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
  text = summary(outcomes, out_dir)
  with open(os.path.join(out_dir, "summary.txt"), "w") as f:
    f.write(text + "\n")
  print("\n" + text, flush=True)
  complete = len(outcomes) == len(chosen) and all(o.status == "ok" for o in outcomes)
  return 0 if complete else 1


if __name__ == "__main__":
  sys.exit(main())
