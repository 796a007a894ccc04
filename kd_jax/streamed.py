"""A study on streamed input (config.data.pipeline, kd_jax/data/stream.py): teachers, student, results.

The same phases as kd_jax/pipeline.py, and the same compiled steps (kd_jax/train.py's supervised and
fused distillation steps, with `streamed=True`: the batch is an argument instead of being drawn from
on-device data). What changes is where batches come from:

- `DeviceFeed` pulls process-local batches from a grain iterator (decoded and cropped by grain's
  threads), assembles them into global arrays sharded over the mesh
  (jax.make_array_from_process_local_data), and keeps `prefetch_batches` of them on the devices ahead
  of the step. It records the iterator's position after every batch it pulls, so a checkpoint of step
  s saves the position of step s (not of the batches read ahead, nor of the steps in flight in
  kd_jax/loop.py); resume sets the iterator there, and the run goes on with the batches it would
  have had.
- Evaluation streams each split once (center crops), computes per-example quantities of every model
  on the device and reduces them on the host in float64 (kd_jax/metrics.py).

Teachers of a group train together (one compiled step for k members, as in memory), each on its own
stream, seeded by the member's index, so each is trained exactly as if alone.
"""

import functools
import os
import time

# This module runs the phases of kd_jax/pipeline.py on other input and shares its private helpers
# (member folders, seed streams, the fit wrapper), so both paths lay out workdirs the same way.
# pylint: disable=protected-access

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import checkpoint, ensemble, evaluation, loop, parallel
from kd_jax import pipeline, results as results_lib, runtime, train
from kd_jax import workdir as workdir_lib
from kd_jax import config as config_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import stream as stream_lib
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model

# Stream roles, the second integer of a stream's seed (stream_lib.stream_seeds).
_TEACHER_STREAM, _STUDENT_STREAM, _STATISTICS_STREAM = 0, 1, 2
# Recorded iterator positions kept behind the newest batch read (the loop's run-ahead and the device
# prefetch are a few steps; a save is never further behind than that).
_POSITIONS_KEPT = 256
PROGRESS_SECONDS = 10.0


def _position_iterator(state):
  """A grain DatasetIterator whose get_state() is `state`: grain's checkpoint handler saves it as it
  would the live iterator (one JSON file per process)."""
  import grain  # pylint: disable=g-import-not-at-top

  class Position(grain.DatasetIterator):

    def __next__(self):
      raise StopIteration

    def get_state(self):
      return state

    def set_state(self, new_state):
      raise NotImplementedError("a recorded position is only saved")

  return Position()


class DeviceFeed:
  """Global, sharded batches from a grain iterator, `depth` ahead, with the iterator's position
  recorded after each one (see the module docstring)."""

  def __init__(self, iterator, shardings, start: int, depth: int):
    self.iterator, self.shardings, self.depth = iterator, shardings, depth
    self.pulled = start
    self.positions = {start: iterator.get_state()}
    self.queue = []

  def _pull(self):
    local = next(self.iterator)
    self.pulled += 1
    self.positions[self.pulled] = self.iterator.get_state()
    self.positions.pop(self.pulled - _POSITIONS_KEPT, None)
    self.queue.append(tuple(jax.make_array_from_process_local_data(sharding, np.asarray(x))
                            for sharding, x in zip(self.shardings, local)))

  def next(self):
    while len(self.queue) < self.depth + 1:
      self._pull()
    return self.queue.pop(0)

  def position(self, step: int):
    """A grain iterator standing where the iterator stood after `step` batches (for a checkpoint)."""
    if step not in self.positions:
      raise RuntimeError(f"the data position of step {step} is no longer recorded")
    return _position_iterator(self.positions[step])


def check_config(config) -> None:
  """One-line errors for options the streamed path does not have (they need the whole dataset on
  the device)."""
  unsupported = {
      "teacher.data_split": config.teacher.data_split != "all",
      "distill.data_split": config.distill.data_split != "all",
      "teacher.train_examples": config.teacher.train_examples > 0,
      "distill.ood_data.source": bool(config.distill.ood_data.source),
      "distill.synthetic_workdir": bool(config.distill.synthetic_workdir),
      "evaluation.augmented_batches": config.evaluation.augmented_batches > 0,
      "evaluation.cka_examples": config.evaluation.cka_examples > 0,
      "evaluation.every_steps": config.evaluation.every_steps > 0,
      "evaluation.independent_student": bool(config.evaluation.independent_student),
      "data.image_size": config.data.image_size > 0,
      "student.init": config.student.init == "teacher_initial" or (
          config.student.init == "interpolate" and config.student.init_batch_stats == "reestimate"),
  }
  for key, used in unsupported.items():
    if used:
      raise KdJaxError(f"config.{key} is not available with streamed input "
                       "(config.data.pipeline); reset it to its default or use data.pipeline=memory.")


def _host_augment(config) -> stream_lib.HostAugment:
  cfg = config.data.stream
  return stream_lib.HostAugment(crop_size=cfg.crop_size, train_augment=cfg.train_augment,
                                min_crop_scale=cfg.min_crop_scale,
                                eval_crop_ratio=cfg.eval_crop_ratio)


def _read_options(config):
  import grain  # pylint: disable=g-import-not-at-top
  threads = config.data.stream.threads
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


def _fit_streamed(ctx, step, state, phase, manager, start, feed):
  """pipeline._fit, saving the feed's position with each checkpoint; stops the reader threads after."""
  phase.data_position = feed.position
  try:
    return pipeline._fit(ctx, step, state, phase, manager, start)
  finally:
    feed.iterator.close()


def _restore(manager, fresh, iterator, name, total):
  """(state, start) with the iterator set to the position saved with the state."""
  state, start = checkpoint.restore_latest(manager, fresh, data_iterator=iterator)
  position = iterator.get_state().get("next_index")
  if position != start:
    raise KdJaxError(f"[{name}] the checkpoint at step {start} holds data position {position}; "
                     f"delete {manager.directory} to restart this phase.")
  if start:
    print(f"[{name}] resuming at step {start}/{total} (data position {position})", flush=True)
  return state, start


def train_teachers(ctx, model, data, teachers_dir, teachers_key):
  """pipeline.train_teachers on streamed batches: member i reads the stream seeded (seed, i)."""
  config, cfg = ctx.config, ctx.config.teacher
  total, steps_per_epoch = pipeline.schedule_length(cfg, len(data.source.train), "teacher")
  tx = train.make_optimizer(cfg.optimizer, total, steps_per_epoch)
  step_fn = train.make_supervised_step(
      model, tx, batch_size=cfg.batch_size, augment=pipeline.teacher_policy(config), mesh=ctx.mesh,
      compute_dtype=ctx.compute_dtype, method=config.ensemble_method, streamed=True)
  init_members = pipeline._teacher_init_fn(ctx, model, tx)
  member_sharding = NamedSharding(ctx.mesh, P(None, parallel.DATA_AXIS))
  for members in pipeline.teacher_groups(config):
    if all(os.path.isdir(pipeline._member_dir(teachers_dir, i)) for i in members):
      continue
    name = pipeline.teacher_group_name("teachers", members, cfg.ensemble_size)
    import grain  # pylint: disable=g-import-not-at-top
    streams = [data.train_batches(cfg.batch_size, (config.seed, _TEACHER_STREAM, i)) for i in members]
    stacked = grain.experimental.ZipMapDataset(streams).map(
        lambda batches: tuple(np.stack(parts) for parts in zip(*batches)))
    iterator = iter(stacked.to_iter_dataset(_read_options(config)))
    manager = checkpoint.make_manager(
        os.path.join(teachers_dir, f"train_{members[0]}-{members[-1]}"))
    fresh = init_members(np.stack([jax.random.fold_in(teachers_key, i) for i in members]))
    state, start = _restore(manager, fresh, iterator, name, total)
    feed = DeviceFeed(iterator, (member_sharding, member_sharding), start,
                      config.data.stream.prefetch_batches)
    phase = loop.Phase(name=name, total=total, steps_per_epoch=steps_per_epoch,
                       images_per_step=cfg.batch_size * len(members), log_fields={"members": members},
                       learning_rate=train.learning_rate_schedule(cfg.optimizer, total,
                                                                  steps_per_epoch),
                       hint="config.teacher.optimizer.learning_rate")
    step = lambda s: step_fn(s, *feed.next(), data.mean, data.std)  # noqa: E731
    state = _fit_streamed(ctx, step, state, phase, manager, start, feed)
    trained = jax.device_get(train.model_variables(state))
    with runtime.deferred_signals():
      for position, index in enumerate(members):
        checkpoint.save_variables(pipeline._member_dir(teachers_dir, index),
                                  jax.tree.map(lambda x: x[position], trained))
    runtime.raise_if_stopped()


def trained_teachers(ctx, model, data, teachers_dir, teachers_key):
  """pipeline.trained_teachers on streamed input."""
  return pipeline.load_trained_teachers(
      ctx, model, teachers_dir, lambda: train_teachers(ctx, model, data, teachers_dir, teachers_key))


def distill_student(ctx, student, teacher, teacher_variables, data, student_dir, rng):
  """pipeline.distill_student on streamed batches, through the same fused distillation step."""
  config, cfg, distill = ctx.config, ctx.config.student, ctx.config.distill
  total, steps_per_epoch = pipeline.schedule_length(cfg, len(data.source.train), "student")
  optimizer_cfg = pipeline.student_optimizer_config(config)
  tx = train.make_optimizer(optimizer_cfg, total, steps_per_epoch)
  step_fn = train.make_distill_step(
      student, teacher, tx, batch_size=cfg.batch_size,
      augment=pipeline.distillation_policy(config), mesh=ctx.mesh,
      temperature=distill.temperature, alpha=distill.alpha, loss_kind=distill.loss,
      compute_dtype=ctx.compute_dtype, method=config.ensemble_method, streamed=True)
  iterator = iter(data.train_batches(cfg.batch_size, (config.seed, _STUDENT_STREAM)).to_iter_dataset(
      _read_options(config)))
  manager = checkpoint.make_manager(student_dir)
  fresh = pipeline.initial_student(ctx, student, teacher, tx, rng, teacher_variables)
  state, start = _restore(manager, fresh, iterator, "student", total)
  batch = parallel.batch_sharding(ctx.mesh)
  feed = DeviceFeed(iterator, (batch, batch), start, config.data.stream.prefetch_batches)
  phase = loop.Phase(name="student", total=total, steps_per_epoch=steps_per_epoch,
                     images_per_step=cfg.batch_size,
                     learning_rate=train.learning_rate_schedule(optimizer_cfg, total, steps_per_epoch),
                     hint="config.student.optimizer.learning_rate")
  step = lambda s: step_fn(s, teacher_variables, *feed.next(), data.mean, data.std)  # noqa: E731
  state = _fit_streamed(ctx, step, state, phase, manager, start, feed)
  return train.model_variables(state)


class StreamedData:
  """A streamed dataset with what the phases need: record sources, host augmentation, statistics."""

  def __init__(self, config, source: stream_lib.StreamDataset, mesh):
    self.config, self.source, self.mesh = config, source, mesh
    self.augment = _host_augment(config)
    mean, std = stream_lib.channel_statistics(
        source.train, self.augment, config.data.stream.statistics_examples,
        stream_lib.stream_seeds(config.seed, _STATISTICS_STREAM)[0], config.data.stream.threads)
    self.mean, self.std = parallel.replicate(pipeline.standardization(mean, std), mesh)

  def train_batches(self, batch_size: int, stream_key):
    return stream_lib.train_batches(
        self.source.train, self.augment, seeds=stream_lib.stream_seeds(*stream_key),
        global_batch=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count())

  def eval_batches(self, split: str, batch_size: int, size: int = 0):
    return stream_lib.eval_batches(
        getattr(self.source, split), self.augment, global_batch=batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(), size=size)


def evaluate(ctx, teacher, student, teacher_variables, student_variables, data) -> dict:
  """Clean test and train metrics of every teacher, the ensemble and the student (the results of
  pipeline.evaluate without its optional parts), from one streamed pass per split."""
  config, mesh = ctx.config, ctx.mesh
  batch_size = max(config.eval_batch_size // mesh.devices.size, 1) * mesh.devices.size

  @functools.partial(jax.jit, out_shardings=parallel.replicated_sharding(mesh))
  def per_example(teacher_variables, student_variables, images, labels):
    x = parallel.shard_batch(
        augment_lib.normalize(images, data.mean, data.std, ctx.compute_dtype), mesh)
    member_logits = ensemble.member_logits(teacher, teacher_variables, x, config.ensemble_method)
    student_logits = student.apply(student_variables, x, train=False)
    return evaluation.per_example_by_role(member_logits.astype(jnp.float32),
                                          student_logits.astype(jnp.float32), labels)

  results = {"teachers": [{} for _ in range(config.teacher.ensemble_size)], "ensemble": {},
             "student": {}}
  batch = parallel.batch_sharding(mesh)
  for split, size in (("test", config.evaluation.test_size), ("train", 0)):
    batches, count = data.eval_batches(split, batch_size, size)
    iterator = iter(batches.to_iter_dataset(_read_options(config)))
    parts, done = [], 0
    started = last_report = time.time()
    for images, labels in iterator:
      images, labels = (jax.make_array_from_process_local_data(batch, x) for x in (images, labels))
      parts.append(per_example(teacher_variables, student_variables, images, labels))
      done += batch_size
      if time.time() - last_report > PROGRESS_SECONDS:
        last_report = time.time()
        print(f"[evaluation] {split}: {min(done, count)}/{count} images, "
              f"{done / (last_report - started):.0f} img/s", flush=True)
      runtime.raise_if_stopped()
    # Global batches hold the split in stored order (processes' rows in process order); the padding
    # is the tail of the last one.
    values = jax.tree.map(lambda *xs: np.concatenate(xs, axis=-1)[..., :count],
                          *jax.device_get(parts))
    evaluation.add_split(results, split, evaluation.summarize_by_role(values))
  return results


def run(config, workdir: str) -> dict:
  """pipeline.run for a config whose data streams (config.data.pipeline)."""
  config_lib.validate(config)
  check_config(config)
  pipeline.teacher_policy(config)
  pipeline.distillation_policy(config)
  source = stream_lib.open_source(config.data)
  crop = config.data.stream.crop_size
  image_shape = (crop, crop, source.channels)
  compute_dtype = jnp.bfloat16 if config.precision == "bf16" else jnp.float32
  teacher = build_model(config.teacher.model, source.num_classes, compute_dtype)
  student = build_model(config.student.model, source.num_classes, compute_dtype)
  mesh = parallel.make_mesh()
  teacher_variables = None
  if config.teacher.load_from:
    teacher_variables = pipeline.load_teachers(teacher, config.teacher.load_from,
                                               config.teacher.ensemble_size, image_shape, mesh)
  num_train, num_test = len(source.train), len(source.test)
  test_examples = min(config.evaluation.test_size or num_test, num_test)
  pipeline.check_sizes(config, num_train, num_train, test_examples, mesh)
  for phase in ("teacher", "student"):
    if config[phase].batch_size % jax.process_count():
      raise KdJaxError(f"config.{phase}.batch_size={config[phase].batch_size} is not divisible by "
                       f"the {jax.process_count()} processes.")
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)
  data = StreamedData(config, source, mesh)
  ctx = pipeline.Context(
      config=config, workdir=workdir, mesh=mesh, teacher_data=None, distill_data=None,
      ood_images=None, image_shape=image_shape, compute_dtype=compute_dtype,
      log=workdir_lib.MetricsLog(workdir),
      plan=pipeline.study_plan(config, num_train, num_train, num_train, test_examples))
  print(f"kd_jax: {source.name} streamed ({num_train} train / {num_test} test, "
        f"{source.num_classes} classes, {crop}x{crop} crops) on {mesh.devices.size} "
        f"{jax.default_backend()} device(s); workdir {workdir}{' (resuming)' if resuming else ''}",
        flush=True)
  print(ctx.plan.describe(), flush=True)
  ctx.log.write({"event": "resume" if resuming else "start", "devices": int(mesh.devices.size),
                 "backend": jax.default_backend(), "pipeline": "stream"})
  if teacher_variables is None:
    teachers_dir = os.path.join(workdir, "teachers")
    teacher_variables = trained_teachers(ctx, teacher, data, teachers_dir,
                                         pipeline._seed_key(config, pipeline._TEACHERS))
  student_variables = distill_student(
      ctx, student, teacher, teacher_variables, data, os.path.join(workdir, "student"),
      pipeline._seed_key(config, pipeline._STUDENT))
  results = evaluate(ctx, teacher, student, teacher_variables, student_variables, data)
  ctx.log.write({"phase": "evaluation", **results_lib.flatten_results(results)})
  runtime.raise_if_stopped()
  workdir_lib.write_results(workdir, results)
  workdir_lib.release(workdir)
  print(results_lib.results_table(results), flush=True)
  return results
