"""The benchmarks' step cases: which of kd_jax's compiled steps to time, built as a run builds them.

  case = Case(kind="distill", depth=20, m=3, batch=128, classes=100, precision="fp32")
  built = build(case, mesh, case_data(case, mesh))    # built.step(*built.args) -> (state, metrics)

A case stands for a run whose config is the model's paper config (configs/cifar_kd.py for PreResNet,
configs/fashion_mnist_kd.py for LeNet-5) with the case's model, ensemble size, batch, precision,
ensemble method and distillation method (`case_config`). A ZOO case is a run of the laptop
benchmark (configs/benchmark/laptop.py: resnet20 -> resnet8 on CIFAR-10) with its `distill_method`
and that method's options there (`method_cases`: one per method). From that config come the
optimizers, the augmentation policies, whether the teachers' logits are cached, and their table,
and a feature method's parameters and state, through the library's own functions, so a benchmark
times the steps a run of that config compiles. The data are random uint8 images of the model's data
set's shape and size, placed and standardized as a run's are.

Kinds of case:
  distill  `train.make_distill_step`: m stacked teachers (eval) + student forward/backward + update;
           with `cached_logits`, its form that reads the ensemble's logits from a table computed
           once on the train set (what a run does for unaugmented distillation data).
  teacher  `train.make_supervised_step` with `members` stacked teachers trained in one step.
  epoch    the distill step driven through one epoch (benchmarks/measure.py).

benchmarks/ reaches kd_jax's run-level code (kd_jax.study) and its step builders through this
module only, save the study plan (benchmarks/estimate.py).
"""

import dataclasses
import itertools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar_kd, fashion_mnist_kd
from configs.benchmark import cifar100 as benchmark_cifar100
from configs.benchmark import laptop
from kd_jax import evaluation, parallel, train
from kd_jax.config import DISTILL_METHODS
from kd_jax.data import placement
from kd_jax.study import memory, phases
from kd_jax.study import student as study_student
from kd_jax.models import build_model

KINDS = ("distill", "teacher", "epoch")
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
MODELS = ("preresnet", "lenet5")
# The laptop benchmark's pair (configs/benchmark/laptop.py: resnet20 -> resnet8 of the CIFAR zoo on
# CIFAR-10), one teacher; a case of it is a run of the laptop variant of its `distill_method`.
ZOO = "zoo"
ZOO_PAIR = laptop.PAIRS[0]
ZOO_CLASSES = 10  # CIFAR-10
ZOO_METHOD = "kd"  # a zoo case's method when it names none
# The methods a ZOO case can run (the laptop config's variants), and those --methods times by
# default: every method of the fused step but the paper's objective.
ZOO_METHODS = benchmark_cifar100.METHODS
BENCHMARK_METHODS = tuple(name for name in DISTILL_METHODS if name != "paper")
CIFAR_TRAIN_SIZE = 50_000  # the paper's train sets (CIFAR-10/100)
MNIST_TRAIN_SIZE = 60_000  # (Fashion-)MNIST's train set
# Synthetic test images (the evaluator's batch, for cached logits, is at most this many).
TEST_SIZE = 1_000
IMAGE_SHAPE = (32, 32, 3)
# Per model: its data set's image shape and train-set size, and the paper config of its runs.
MODEL_IMAGE_SHAPE = {"preresnet": IMAGE_SHAPE, "lenet5": (28, 28, 1), ZOO: IMAGE_SHAPE}
MODEL_TRAIN_SIZE = {"preresnet": CIFAR_TRAIN_SIZE, "lenet5": MNIST_TRAIN_SIZE,
                    ZOO: laptop.TRAIN_EXAMPLES}
MODEL_CONFIGS = {"preresnet": cifar_kd, "lenet5": fashion_mnist_kd}
# --max-pool: how LeNet-5 computes max pooling, as kd_jax.models.lenet.LeNet5's max_pool_impl.
MAX_POOL_IMPLS = {"kd_jax": "reshape", "flax": "reduce_window"}
DATA_SEED = 0


@dataclasses.dataclass(frozen=True)
class Case:
  """One step to time (see the module docstring); `steps` timed after `warmup` untimed ones."""
  kind: str = "distill"
  model: str = "preresnet"  # one of MODELS, or ZOO
  lenet_pooling: str = ""  # lenet5: 'avg' | 'max'; '' = the model config's default
  max_pool: str = "kd_jax"  # lenet5 with max pooling: a MAX_POOL_IMPLS key
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
  # distill: the step reads the ensemble's logits from a table computed once on the train set
  # instead of running the teachers (needs a config that caches them: `caches_teacher_logits`)
  cached_logits: bool = False
  # config.distill.method of the case's run (config.DISTILL_METHODS; ZOO also 'ce', the student on
  # the labels alone); '' = the model config's ('paper'; ZOO: ZOO_METHOD)
  distill_method: str = ""


def case_config(case: Case):
  """The config of a run whose steps are `case`'s (see the module docstring)."""
  if case.model == ZOO:
    config = laptop.get_config(benchmark_cifar100.variant_name(
        *ZOO_PAIR, case.distill_method or ZOO_METHOD))
  elif case.model in MODELS:
    config = MODEL_CONFIGS[case.model].get_config()
    if case.distill_method:
      config.distill.method = case.distill_method
  else:
    raise ValueError(f"model {case.model!r} is not one of {(*MODELS, ZOO)}")
  for phase in (config.teacher, config.student):
    if case.model == "preresnet":
      phase.model.depth = case.depth
    if case.model == "lenet5" and case.lenet_pooling:
      phase.model.pooling = case.lenet_pooling
    phase.batch_size = case.batch
  config.teacher.ensemble_size = case.members if case.kind == "teacher" else case.m
  config.teacher.members_per_step = 0
  config.precision = case.precision
  config.ensemble_method = case.method
  return config


def compute_dtype(config):
  return PRECISIONS[config.precision]


def model(case: Case, phase: str = "student"):
  """The network of the case's `phase` ('teacher' | 'student': one network for both but in a ZOO
  case), from its config's model config."""
  net = build_model(case_config(case)[phase].model, case.classes, PRECISIONS[case.precision])
  if case.model == "lenet5":
    if case.max_pool not in MAX_POOL_IMPLS:
      raise ValueError(f"max_pool {case.max_pool!r} is not one of {tuple(MAX_POOL_IMPLS)}")
    net = net.clone(max_pool_impl=MAX_POOL_IMPLS[case.max_pool])
  return net


def pooling(case: Case):
  """LeNet-5's pooling ('max' or 'avg': case.lenet_pooling or the config's); None otherwise."""
  return case_config(case).student.model.pooling if case.model == "lenet5" else None


def caches_teacher_logits(case: Case) -> bool:
  """Whether a run of the case's config computes the teachers' logits once (unaugmented data)."""
  return phases.caches_teacher_logits(case_config(case))


def image_shape(case: Case) -> tuple:
  return MODEL_IMAGE_SHAPE[case.model]


def images_per_step(case: Case) -> int:
  return case.batch * (case.members if case.kind == "teacher" else 1)


def describe(case: Case) -> dict:
  """The fields that name a case in a record."""
  pool = pooling(case)
  config = case_config(case)
  return {"kind": case.kind, "model": case.model,
          "depth": case.depth if case.model == "preresnet" else None, "pooling": pool,
          "teacher_model": config.teacher.model.name, "student_model": config.student.model.name,
          "distill_method": case.distill_method or config.distill.method,
          "max_pool": case.max_pool if pool == "max" else None,
          "m": case.m if case.kind != "teacher" else None,
          "members": case.members if case.kind == "teacher" else None, "batch": case.batch,
          "classes": case.classes}


# ------------------------------------------------------------------------------------------------
# Data, states and steps.


def synthetic_data(num_train: int, num_classes: int, mesh, shape=IMAGE_SHAPE) -> placement.DeviceData:
  """An in-memory dataset of random uint8 images (CIFAR-shaped by default), placed as a run places
  data, with TEST_SIZE test images."""
  rng = np.random.default_rng(DATA_SEED)
  images = rng.integers(0, 256, (num_train + TEST_SIZE, *shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_train + TEST_SIZE).astype(np.int32)
  mean, std = placement.standardization(*placement.channel_statistics(images[:num_train]))
  return parallel.replicate(placement.DeviceData(
      train_images=images[:num_train], train_labels=labels[:num_train],
      test_images=images[num_train:], test_labels=labels[num_train:], mean=mean, std=std), mesh)


def case_data(case: Case, mesh) -> placement.DeviceData:
  return synthetic_data(case.train_size, case.classes, mesh, image_shape(case))


def optimizer(config, phase: str, train_size: int):
  """The optimizer of `phase` ('teacher' | 'student') in a run of `config` on train_size images."""
  total, steps_per_epoch = phases.schedule_length(config[phase], train_size, phase)
  return train.make_optimizer(config[phase].optimizer, total, steps_per_epoch)


def initial_state(net, tx, mesh, shape, seed: int = 0) -> train.TrainState:
  """One freshly initialized train state, replicated on the mesh."""
  init = jax.jit(lambda key: train.create_state(net, tx, key, shape),
                 out_shardings=parallel.replicated_sharding(mesh))
  return init(jax.random.PRNGKey(seed))


def stacked_states(net, tx, count: int, mesh, shape):
  """`count` independently initialized train states stacked on a leading axis (one compile)."""
  keys = jax.random.split(jax.random.PRNGKey(1), count)
  init = jax.jit(jax.vmap(lambda key: train.create_state(net, tx, key, shape)),
                 out_shardings=parallel.replicated_sharding(mesh))
  return init(keys)


def context(config, mesh, shape=IMAGE_SHAPE) -> phases.Context:
  """The run context the student's phase reads (no workdir, log or data: only the step's settings)."""
  return phases.Context(config=config, workdir="", mesh=mesh, log=None, image_shape=tuple(shape),
                        compute_dtype=compute_dtype(config))


def distill_step(config, student, teacher, tx, mesh, *, cached: bool = False,
                 streamed: bool = False, train_size: int = 0):
  """`train.make_distill_step` with the distillation settings of a run of `config` on train_size
  images (a method's warm-up counts epochs of them; CRD's memory bank holds one row per image;
  0: no train set, for the methods that count neither)."""
  spec = distill_spec(config, mesh, cached=cached, streamed=streamed, train_size=train_size)
  return train.make_distill_step(student, teacher, tx, spec, mesh)


def distill_spec(config, mesh, *, cached: bool = False, streamed: bool = False,
                 train_size: int = 0):
  """The step's description as a run of `config` on train_size images makes it (see distill_step)."""
  if not train_size:
    return study_student.distill_spec(context(config, mesh), cached=cached, streamed=streamed)
  _, steps_per_epoch = phases.schedule_length(config.student, train_size, "student",
                                              phases.real_batch_size(config))
  return study_student.distill_spec(context(config, mesh), cached=cached, streamed=streamed,
                                    steps_per_epoch=steps_per_epoch, num_examples=train_size)


def with_method(config, spec, student, teacher, state, teacher_variables, tx, data, mesh):
  """`state` with the distillation method's parameters, their optimizer state and the method's
  state, initialized as a run initializes them (`kd_jax.study.student.initial_method`); unchanged
  for a method that reads logits only."""
  ctx = context(config, mesh, data.train_images.shape[1:])
  return study_student.with_method(
      ctx, spec, student, teacher, state, teacher_variables, tx,
      jax.random.fold_in(jax.random.PRNGKey(0), study_student.METHOD_STREAM), data.train_labels)


def teacher_logits_table(config, net, teacher_variables, data, mesh):
  """The ensemble's (N, C) logits on the train set, as a run of `config` caches them before the
  student's phase: `kd_jax.study.memory.distillation_targets` with the evaluator a run builds."""
  smallest_split = min(data.test_images.shape[0], data.train_images.shape[0])
  evaluator = evaluation.Evaluator(
      net, net, mesh=mesh, compute_dtype=compute_dtype(config), method=config.ensemble_method,
      batch_size=evaluation.eval_batch_size(config.eval_batch_size, smallest_split, mesh))
  context = phases.Context(
      config=config, workdir="", mesh=mesh, log=None, teacher_data=data, distill_data=data,
      image_shape=tuple(data.train_images.shape[1:]), compute_dtype=compute_dtype(config))
  _, table = memory.distillation_targets(context, evaluator, teacher_variables)
  if table is None:
    raise ValueError("a run of this config runs its teachers in every step (its distillation data "
                     "are augmented): it has no cached-logits step to time")
  return table


# The last network_starts: (its key, the student's state, the teachers' variables).
_last_starts = []


def network_starts(case: Case, config, student, teacher, tx, mesh):
  """(the student's initial state, the m stacked teachers' variables) of a distill case, initialized
  once for consecutive cases that differ in their distillation method only (the laptop pair's
  method cases: initializing compiles both networks, which costs more than the step's compile);
  fresh copies each time, because the step consumes (donates) its state."""
  key = (dataclasses.replace(case, kind="distill", distill_method="", steps=0, warmup=0,
                             cached_logits=False, epoch_steps=0),
         config.student.optimizer.to_json(), mesh)
  if not _last_starts or _last_starts[0] != key:
    _last_starts[:] = [key, initial_state(student, tx, mesh, image_shape(case)),
                       train.model_variables(stacked_states(teacher, tx, case.m, mesh,
                                                            image_shape(case)))]
  return jax.tree.map(jnp.copy, tuple(_last_starts[1:]))


class Built(NamedTuple):
  """A case's compiled step and its arguments (args[0], the train state, is threaded through)."""
  step: Callable
  args: list
  cache_s: Optional[float] = None  # cached logits: seconds to compute the table (with compiling)


def build_distill(case: Case, mesh, data) -> Built:
  """The library's fused distillation step and [student state, teacher inputs, data]: the stacked
  teachers' variables, or with case.cached_logits their table of logits. The student state holds
  the method's parameters and state, if it has any."""
  config, student, teacher = case_config(case), model(case), model(case, "teacher")
  tx = optimizer(config, "student", case.train_size)
  spec = distill_spec(config, mesh, cached=case.cached_logits, train_size=case.train_size)
  step = train.make_distill_step(student, teacher, tx, spec, mesh)
  state, teachers = network_starts(case, config, student, teacher, tx, mesh)
  state = with_method(config, spec, student, teacher, state, teachers, tx, data, mesh)
  if not case.cached_logits:
    return Built(step, [state, teachers, data])
  start = time.perf_counter()  # once per run in the pipeline; timed with its compilation
  table = jax.block_until_ready(teacher_logits_table(config, teacher, teachers, data, mesh))
  return Built(step, [state, table, data], time.perf_counter() - start)


def build_teacher(case: Case, mesh, data) -> Built:
  """The library's supervised step for `members` teachers trained together, and [states, data]."""
  config, net = case_config(case), model(case)
  tx = optimizer(config, "teacher", case.train_size)
  step = train.make_supervised_step(
      net, tx, batch_size=config.teacher.batch_size, augment=phases.teacher_policy(config),
      mesh=mesh, compute_dtype=compute_dtype(config), method=config.ensemble_method)
  return Built(step, [stacked_states(net, tx, case.members, mesh, image_shape(case)), data])


def build(case: Case, mesh, data) -> Built:
  """build_teacher for teacher cases, else build_distill (an epoch case runs the distill step)."""
  return (build_teacher if case.kind == "teacher" else build_distill)(case, mesh, data)


def distillation_policy(case: Case):
  """The augmentation of the case's distillation images (the input part of its distill step)."""
  return phases.distillation_policy(case_config(case))


# ------------------------------------------------------------------------------------------------
# Sets of cases.


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


def method_cases(names, steps: int, warmup: int, batch: int = 0, train_size: int = 0) -> list:
  """One distill case of the laptop benchmark's pair per method of `names`: the step of a run of
  configs/benchmark/laptop.py with that method (its options, its one teacher, its batch and its
  train-set size, unless `batch` or `train_size` is given)."""
  config = laptop.get_config(benchmark_cifar100.variant_name(*ZOO_PAIR, ZOO_METHOD))
  return [Case(kind="distill", model=ZOO, distill_method=name, m=config.teacher.ensemble_size,
               batch=batch or config.student.batch_size, classes=ZOO_CLASSES, steps=steps,
               warmup=warmup, train_size=train_size or MODEL_TRAIN_SIZE[ZOO]) for name in names]


def case_data_cache(mesh):
  """data(case): the case's synthetic data, kept while consecutive cases share shape and size."""
  cache = {}

  def data(case: Case):
    key = (case.train_size, case.classes, image_shape(case))
    if key not in cache:
      cache.clear()
      cache[key] = case_data(case, mesh)
    return cache[key]

  return data
