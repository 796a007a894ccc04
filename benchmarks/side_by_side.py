"""kd_jax's steps and benchmarks/torch_reference.py's (PyTorch eager) timed side by side.

  records = side_by_side(side_by_side_cases(["lenet5"], steps=10, warmup=3), rounds=5)
  print(side_by_side_table(records))

For each model, the teacher step (3 stacked members, batch 256) and the distillation step (3
teachers, batch 128) of kd_jax and of PyTorch (the same networks, data shapes and optimizers) are
each built and warmed up once, then timed in alternating rounds (kd_jax first in even rounds,
PyTorch first in odd ones), so that load from other processes falls on both. One record per case:
the medians over all timed steps, images per second and their ratio (kd_jax / PyTorch; > 1 means
kd_jax is faster). Where a run of the model's config caches the teachers' logits (LeNet-5, whose
distillation data are not augmented), a third case, `cached`: the step such a run runs (the logits
computed once per run on the train set), against the same PyTorch distillation step, which runs its
teachers every step as a plain loop (and the original code) does; its record adds `cache_s`, the
table's one-time cost, and `ratio_one_epoch`, the ratio with that cost spread over a single epoch's
steps (the worst case: a run of E epochs spreads it over E times as many). Without torch
installed, only the kd_jax columns are filled. PyTorch runs where kd_jax does: on a CUDA GPU when
JAX's backend is a GPU and torch sees one (`torch_device`), else on the CPU.
"""

import dataclasses
import itertools
import statistics
import time

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness, torch_reference
from kd_jax import parallel


def side_by_side_cases(models, steps: int, warmup: int, lenet_pooling: str = "",
                       max_pool: str = "kd_jax", depth: int = 20) -> list:
  """Per model: the teacher step (3 stacked members, batch 256), the distill step (3 teachers, 128)
  and, where a run caches the teachers' logits, the distill step that reads them. PreResNet's depth
  is `depth`."""
  cases = []
  for model in models:
    common = dict(model=model, classes=10 if model == "lenet5" else 100, steps=steps,
                  warmup=warmup, train_size=cases_lib.MODEL_TRAIN_SIZE[model],
                  lenet_pooling=lenet_pooling, max_pool=max_pool, depth=depth)
    cases.append(cases_lib.Case(kind="teacher", members=3, batch=256, **common))
    distill = cases_lib.Case(kind="distill", m=3, batch=128, **common)
    cases.append(distill)
    if cases_lib.caches_teacher_logits(distill):
      cases.append(dataclasses.replace(distill, cached_logits=True))
  return cases


@dataclasses.dataclass
class Contender:
  """One case's kd_jax step (with its threaded arguments) and PyTorch step, and their step times."""
  case: cases_lib.Case
  built: cases_lib.Built
  compile_s: float
  compiles: int
  torch_step: object = None
  jax_rounds: list = dataclasses.field(default_factory=list)  # per round: that round's step seconds
  torch_rounds: list = dataclasses.field(default_factory=list)


def torch_device() -> str:
  """'cuda' when JAX runs on a GPU and torch sees a CUDA GPU, else 'cpu': PyTorch is timed on the
  kind of device kd_jax is."""
  return "cuda" if jax.default_backend() == "gpu" and torch_reference.cuda_available() else "cpu"


def prepare_contender(case: cases_lib.Case, mesh, data, use_torch: bool,
                      torch_channels_last: bool) -> Contender:
  """Builds, compiles and warms up the case's kd_jax step, and its PyTorch step if `use_torch`."""
  built = cases_lib.build(case, mesh, data)
  with harness.CompileCounter() as counter:
    start = time.perf_counter()
    built.step.lower(*built.args).compile()
    compile_s = time.perf_counter() - start
    _, _, args = harness.time_steps(built.step, built.args, 0, max(case.warmup, 1))
  contender = Contender(case, built._replace(args=args), compile_s, counter.count)
  if use_torch:
    contender.torch_step, _ = torch_reference.build(
        case.kind, case.model, case.depth, case.m, case.members, case.batch, case.classes,
        torch_channels_last, cases_lib.pooling(case) or "max", case.train_size,
        device=torch_device())
    harness.call_seconds(contender.torch_step, max(case.warmup, 1))
  return contender


def time_rounds(contenders, rounds: int) -> int:
  """Runs the alternating rounds; returns how many compilations happened in them (should be 0)."""
  with harness.CompileCounter() as compiles:
    for round_index in range(rounds):
      for c in contenders:
        for framework in (("jax", "torch") if round_index % 2 == 0 else ("torch", "jax")):
          if framework == "jax":
            times, _, args = harness.time_steps(c.built.step, c.built.args, c.case.steps, 0)
            c.built = c.built._replace(args=args)
            c.jax_rounds.append(times)
          elif c.torch_step is not None:
            c.torch_rounds.append(harness.call_seconds(c.torch_step, c.case.steps))
  return compiles.count


def _round_medians_ms(rounds) -> list:
  return [round(statistics.median(times) * 1e3, 1) for times in rounds]


def _torch_fields(c: Contender, images: int, jax_s: float, jax_one_epoch_s,
                  torch_channels_last: bool) -> dict:
  torch_s = statistics.median(itertools.chain(*c.torch_rounds))
  torch = torch_reference.torch
  fields = {"torch": f"{torch.__version__}, {torch_device()}, {torch.get_num_threads()} threads, "
                     f"{'channels_last' if torch_channels_last else 'NCHW'}",
            "torch_step_ms": round(torch_s * 1e3, 2),
            "torch_round_ms": _round_medians_ms(c.torch_rounds),
            "torch_images_per_second": round(images / torch_s, 1),
            "ratio": round(torch_s / jax_s, 3)}
  if jax_one_epoch_s is not None:
    fields["ratio_one_epoch"] = round(torch_s / jax_one_epoch_s, 3)
  return fields


def contender_record(c: Contender, rounds: int, compiles_while_timed: int, busy,
                     torch_channels_last: bool) -> dict:
  """The record of one case after the rounds (see the module docstring)."""
  images = cases_lib.images_per_step(c.case)
  jax_s = statistics.median(itertools.chain(*c.jax_rounds))
  record = {"event": "side_by_side", **cases_lib.describe(c.case),
            "kind": "cached" if c.case.cached_logits else c.case.kind, "images_per_step": images,
            "rounds": rounds, "steps_per_round": c.case.steps, **harness.jax_environment(),
            "jax_compile_s": round(c.compile_s, 2), "jax_compiles": c.compiles,
            "jax_compiles_while_timed": compiles_while_timed, "jax_step_ms": round(jax_s * 1e3, 2),
            "jax_round_ms": _round_medians_ms(c.jax_rounds),
            "jax_images_per_second": round(images / jax_s, 1),
            "torch": None, "torch_step_ms": None, "torch_images_per_second": None, "ratio": None,
            "host_other_busy": busy}
  jax_one_epoch_s = None
  if c.built.cache_s is not None:
    # The table is computed once per run; per step of a single epoch it costs cache_s / S.
    jax_one_epoch_s = jax_s + c.built.cache_s / (c.case.train_size // c.case.batch)
    record.update(cache_s=round(c.built.cache_s, 3),
                  jax_step_ms_one_epoch=round(jax_one_epoch_s * 1e3, 2))
  if c.torch_step is not None:
    record.update(_torch_fields(c, images, jax_s, jax_one_epoch_s, torch_channels_last))
  return record


def side_by_side(cases, rounds: int, mesh=None, torch_channels_last: bool = False) -> list:
  """Times each case's kd_jax and PyTorch steps in alternating rounds; one record per case.

  Everything is built, compiled and warmed up first. Then, `rounds` times, each case runs
  `case.steps` kd_jax steps and `case.steps` PyTorch steps, kd_jax first in even rounds and PyTorch
  first in odd ones. A record's step_ms are medians over all its timed steps; `*_round_ms` are the
  per-round medians, to show how much load moved the numbers.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  use_torch = torch_reference.available()
  data = cases_lib.case_data_cache(mesh)
  contenders = [prepare_contender(case, mesh, data(case), use_torch, torch_channels_last)
                for case in cases]
  before = harness.cpu_jiffies()
  compiles_while_timed = time_rounds(contenders, rounds)
  busy = harness.other_busy_fraction(before, harness.cpu_jiffies())
  return [contender_record(c, rounds, compiles_while_timed, busy, torch_channels_last)
          for c in contenders]


SIDE_BY_SIDE_COLUMNS = (("model", 9), ("kind", 7), ("m", 2), ("members", 7), ("batch", 5),
                        ("jax_step_ms", 11), ("jax_images_per_second", 10), ("torch_step_ms", 13),
                        ("torch_images_per_second", 11), ("ratio", 9), ("host_other_busy", 5))
SIDE_BY_SIDE_HEADERS = {"jax_step_ms": "kd_jax ms", "jax_images_per_second": "kd_jax img/s",
                        "torch_step_ms": "PyTorch ms", "torch_images_per_second": "torch img/s",
                        "ratio": "kd_jax/pt", "host_other_busy": "busy"}


def side_by_side_table(records) -> str:
  """kd_jax and PyTorch columns per case; ratio = kd_jax img/s / PyTorch img/s."""
  return harness.columns_table(records, SIDE_BY_SIDE_COLUMNS, SIDE_BY_SIDE_HEADERS)


def set_torch_threads(threads: int) -> None:
  """torch.set_num_threads(threads) where torch is installed and threads > 0."""
  if threads and torch_reference.available():
    torch_reference.torch.set_num_threads(threads)


def torch_record(case: cases_lib.Case) -> dict:
  """The PyTorch reference's record of a distill case (--torch), or a line saying it was skipped."""
  if not torch_reference.available():
    return {"kind": "torch_reference", "skipped": "torch is not installed"}
  record = torch_reference.benchmark(case.depth, case.m, case.batch, case.classes, case.steps,
                                     case.warmup, device=torch_device())
  record.update(kind="torch_reference", compile_s=None)  # eager: nothing to compile
  return record
