"""One study, resumable: train (or load) the teacher ensemble, distill the student, evaluate, report.

    teachers (m, trained k at a time in one compiled step) -> student (fused distillation step)
      -> clean evaluation of teachers, ensemble and student on the test and train sets -> results.json

Every phase checkpoints with Orbax; rerunning the same command continues at the teacher group and step
where it stopped, and replays the same batches, so the result equals an uninterrupted run's.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import checkpoint, ensemble, losses, metrics, parallel, report, train, workdir as workdir_lib
from kd_jax import config as config_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import load_dataset
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model

# fold_in tags under the seed's key: teacher i uses (TEACHERS, i), the student STUDENT.
_TEACHERS_STREAM, _STUDENT_STREAM = 0, 1


@dataclasses.dataclass
class Context:
  """What every phase of one run needs."""
  config: object
  workdir: str
  mesh: object
  data: train.DeviceData
  image_shape: tuple
  num_train: int
  num_classes: int
  compute_dtype: object
  log: workdir_lib.MetricsLog


def device_data(dataset, mesh) -> train.DeviceData:
  scaled = dataset.train_images.astype(np.float32) / 255.0
  mean = scaled.mean(axis=(0, 1, 2))
  std = scaled.std(axis=(0, 1, 2)) + 1e-8
  return parallel.replicate(train.DeviceData(
      train_images=dataset.train_images, train_labels=dataset.train_labels.astype(np.int32),
      test_images=dataset.test_images, test_labels=dataset.test_labels.astype(np.int32),
      mean=mean.astype(np.float32), std=std.astype(np.float32)), mesh)


def schedule_length(phase_cfg, num_train: int, phase: str):
  """(total steps, steps per epoch) of a phase."""
  steps_per_epoch = num_train // phase_cfg.batch_size
  if steps_per_epoch == 0:
    raise KdJaxError(f"config.{phase}.batch_size={phase_cfg.batch_size} exceeds the {num_train} "
                     "training examples; lower it.")
  total = phase_cfg.steps if phase_cfg.steps > 0 else phase_cfg.epochs * steps_per_epoch
  return int(total), steps_per_epoch


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def fit(ctx: Context, name: str, step_fn, state, args, *, manager, start: int, total: int,
        images_per_step: int, steps_per_epoch: int, log_fields: dict):
  """Runs step_fn from `start` to `total`, logging progress and checkpointing; returns the state.

  Metrics are fetched from the device only every log_every_steps, so the host runs ahead of the device
  between logs. Ctrl-C (or SIGTERM, which run.py turns into KeyboardInterrupt) saves before exiting.
  """
  cfg = ctx.config
  step = start
  window_start, window_step = time.time(), start
  try:
    while step < total:
      state, step_metrics = step_fn(state, *args)
      step += 1
      if step == start + 1:
        jax.block_until_ready(step_metrics)
        compile_s = time.time() - window_start
        print(f"[{name}] first step (including compilation) took {compile_s:.1f}s", flush=True)
        ctx.log.write({"phase": name, **log_fields, "step": step, "compile_s": round(compile_s, 2)})
        window_start, window_step = time.time(), step
      if step % cfg.log_every_steps == 0 or step == total:
        values = {k: float(np.mean(v)) for k, v in jax.device_get(step_metrics).items()}
        elapsed = time.time() - window_start
        rate = (step - window_step) / elapsed if elapsed > 0 and step > window_step else float("nan")
        eta = (total - step) / rate if rate == rate and rate > 0 else 0.0
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"[{name}] step {step}/{total} epoch {step / steps_per_epoch:.2f} | {shown} | "
              f"{rate * images_per_step:.0f} img/s | ETA {_format_duration(eta)}", flush=True)
        ctx.log.write({"phase": name, **log_fields, "step": step,
                       "epoch": round(step / steps_per_epoch, 4), **values,
                       "images_per_second": round(rate * images_per_step, 1)})
        window_start, window_step = time.time(), step
      if step % cfg.checkpoint_every_steps == 0 or step == total:
        checkpoint.save_state(manager, step, state)
  except KeyboardInterrupt:
    print(f"[{name}] interrupted at step {step}: saving a checkpoint to resume from", flush=True)
    checkpoint.save_state(manager, step, state)
    manager.wait_until_finished()
    raise
  manager.wait_until_finished()
  return state


def _member_dir(teachers_dir: str, index: int) -> str:
  return os.path.join(teachers_dir, f"member_{index}")


def _teacher_template(model, image_shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)


def train_teachers(ctx: Context, model) -> str:
  """Trains the m teachers, k per compiled step, saving each; returns the folder holding them."""
  cfg = ctx.config.teacher
  teachers_dir = os.path.join(ctx.workdir, "teachers")
  total, steps_per_epoch = schedule_length(cfg, ctx.num_train, "teacher")
  parallel.check_batch_size(cfg.batch_size, ctx.mesh, "config.teacher.batch_size")
  tx = train.make_optimizer(cfg.optimizer, total, steps_per_epoch)
  augment = augment_lib.POLICIES[ctx.config.data.augment]
  step_fn = train.make_supervised_step(
      model, tx, batch_size=cfg.batch_size, augment=augment, mesh=ctx.mesh,
      compute_dtype=ctx.compute_dtype, method=ctx.config.ensemble_method)
  # One compiled init for a whole group: vmap is fine here, it runs once.
  init_members = jax.jit(
      lambda keys: jax.vmap(lambda rng: train.create_state(model, tx, rng, ctx.image_shape))(keys),
      out_shardings=parallel.replicated_sharding(ctx.mesh))
  teachers_key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), _TEACHERS_STREAM)

  m = cfg.ensemble_size
  k = cfg.members_per_step or m
  for first in range(0, m, k):
    members = list(range(first, min(first + k, m)))
    if all(os.path.isdir(_member_dir(teachers_dir, i)) for i in members):
      continue
    name = f"teachers {members[0] + 1}-{members[-1] + 1}/{m}"
    manager = checkpoint.make_manager(
        os.path.join(teachers_dir, f"train_{members[0]}-{members[-1]}"))
    fresh = init_members(np.stack([jax.random.fold_in(teachers_key, i) for i in members]))
    state, start = checkpoint.restore_latest(manager, fresh)
    if start:
      print(f"[{name}] resuming at step {start}/{total}", flush=True)
    state = fit(ctx, name, step_fn, state, (ctx.data,), manager=manager, start=start, total=total,
                images_per_step=cfg.batch_size * len(members), steps_per_epoch=steps_per_epoch,
                log_fields={"members": members})
    manager.close()
    trained = jax.device_get(train.model_variables(state))
    for position, index in enumerate(members):
      checkpoint.save_variables(_member_dir(teachers_dir, index),
                                jax.tree.map(lambda x: x[position], trained))
  return teachers_dir


def load_teachers(model, teachers_dir: str, ensemble_size: int, image_shape, mesh):
  """Loads members 0..m-1 from `teachers_dir` (or a workdir holding teachers/) as stacked variables."""
  if os.path.isdir(os.path.join(teachers_dir, "teachers")):
    teachers_dir = os.path.join(teachers_dir, "teachers")
  template = _teacher_template(model, image_shape)
  members = [checkpoint.load_variables(_member_dir(teachers_dir, i), template)
             for i in range(ensemble_size)]
  return parallel.replicate(jax.tree.map(lambda *xs: np.stack(xs), *members), mesh)


def distill_student(ctx: Context, student, teacher, teacher_variables):
  cfg = ctx.config.student
  total, steps_per_epoch = schedule_length(cfg, ctx.num_train, "student")
  parallel.check_batch_size(cfg.batch_size, ctx.mesh, "config.student.batch_size")
  tx = train.make_optimizer(cfg.optimizer, total, steps_per_epoch)
  distill = ctx.config.distill
  step_fn = train.make_distill_step(
      student, teacher, tx, batch_size=cfg.batch_size,
      augment=augment_lib.POLICIES[ctx.config.data.augment], mesh=ctx.mesh,
      temperature=distill.temperature, alpha=distill.alpha, loss_kind=distill.loss,
      compute_dtype=ctx.compute_dtype, method=ctx.config.ensemble_method)
  rng = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), _STUDENT_STREAM)
  fresh = jax.jit(lambda r: train.create_state(student, tx, r, ctx.image_shape),
                  out_shardings=parallel.replicated_sharding(ctx.mesh))(rng)
  manager = checkpoint.make_manager(os.path.join(ctx.workdir, "student"))
  state, start = checkpoint.restore_latest(manager, fresh)
  if start:
    print(f"[student] resuming at step {start}/{total}", flush=True)
  state = fit(ctx, "student", step_fn, state, (teacher_variables, ctx.data), manager=manager,
              start=start, total=total, images_per_step=cfg.batch_size,
              steps_per_epoch=steps_per_epoch, log_fields={})
  manager.close()
  return state


def _eval_batch_size(ctx: Context) -> int:
  smallest = min(ctx.num_train, int(ctx.data.test_images.shape[0]))
  devices = ctx.mesh.devices.size
  size = min(ctx.config.eval_batch_size, smallest) // devices * devices
  if size == 0:
    raise KdJaxError(f"the test set is smaller than the {devices} devices in use.")
  return size


@jax.jit
def _split_metrics(member_logits, student_logits, labels):
  """All metrics of one split in one compiled call: per teacher, ensemble, student and fidelity."""
  ensemble_logits = losses.ensemble_log_probs(member_logits)
  return {
      "teachers": jax.vmap(lambda z: metrics.classification_metrics(z, labels))(member_logits),
      "ensemble": metrics.classification_metrics(ensemble_logits, labels),
      "student": {**metrics.classification_metrics(student_logits, labels),
                  **metrics.fidelity_metrics(ensemble_logits, student_logits)},
  }


def evaluate(ctx: Context, teacher, teacher_variables, student, student_variables) -> dict:
  """Clean evaluation (no augmentation, eval-mode BatchNorm) on the test and the train set."""
  batch_size = _eval_batch_size(ctx)
  method = ctx.config.ensemble_method
  predict_teachers = train.make_predict_fn(
      lambda v, x: ensemble.map_members(lambda vi: teacher.apply(vi, x, train=False), v,
                                        method=method),
      batch_size=batch_size, mesh=ctx.mesh, compute_dtype=ctx.compute_dtype)
  predict_student = train.make_predict_fn(
      lambda v, x: student.apply(v, x, train=False),
      batch_size=batch_size, mesh=ctx.mesh, compute_dtype=ctx.compute_dtype)
  data = ctx.data
  m = ctx.config.teacher.ensemble_size
  results = {"teachers": [{} for _ in range(m)], "ensemble": {}, "student": {}}
  for split, images, labels in (("test", data.test_images, data.test_labels),
                                ("train", data.train_images, data.train_labels)):
    values = jax.device_get(_split_metrics(
        predict_teachers(teacher_variables, images, data.mean, data.std),
        predict_student(student_variables, images, data.mean, data.std), labels))
    for i in range(m):
      results["teachers"][i].update({f"{split}_{k}": float(v[i])
                                     for k, v in values["teachers"].items()})
    for role in ("ensemble", "student"):
      results[role].update({f"{split}_{k}": float(v) for k, v in values[role].items()})
  return results


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole study of `config` in `workdir` and returns its results."""
  config_lib.validate(config)
  if config.data.augment not in augment_lib.POLICIES:
    raise KdJaxError(f"config.data.augment={config.data.augment!r} is not valid; choose one of "
                     f"{', '.join(augment_lib.POLICIES)}.")
  # Everything that can fail on the user's input happens before the workdir is touched.
  dataset = load_dataset(config.data)
  compute_dtype = jnp.bfloat16 if config.precision == "bf16" else jnp.float32
  teacher = build_model(config.teacher.model, dataset.num_classes, compute_dtype)
  student = build_model(config.student.model, dataset.num_classes, compute_dtype)
  image_shape = tuple(dataset.train_images.shape[1:])
  mesh = parallel.make_mesh()
  teacher_variables = None
  if config.teacher.load_from:
    teacher_variables = load_teachers(teacher, config.teacher.load_from,
                                      config.teacher.ensemble_size, image_shape, mesh)
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)

  ctx = Context(config=config, workdir=workdir, mesh=mesh, data=device_data(dataset, mesh),
                image_shape=image_shape, num_train=int(dataset.train_images.shape[0]), num_classes=dataset.num_classes,
                compute_dtype=compute_dtype, log=workdir_lib.MetricsLog(workdir))
  print(f"kd_jax: {dataset.name} ({ctx.num_train} train / {dataset.test_images.shape[0]} test, "
        f"{dataset.num_classes} classes) on {mesh.devices.size} {jax.default_backend()} device(s); "
        f"workdir {workdir}{' (resuming)' if resuming else ''}", flush=True)
  ctx.log.write({"event": "resume" if resuming else "start", "devices": int(mesh.devices.size),
                 "backend": jax.default_backend()})

  if teacher_variables is None:
    teacher_variables = load_teachers(teacher, train_teachers(ctx, teacher),
                                      config.teacher.ensemble_size, image_shape, mesh)
  student_state = distill_student(ctx, student, teacher, teacher_variables)

  results = evaluate(ctx, teacher, teacher_variables, student, train.model_variables(student_state))
  ctx.log.write({"phase": "evaluation", **report.flatten_results(results)})
  workdir_lib.write_results(workdir, results)
  print(report.results_table(results), flush=True)
  return results
