"""A study on streamed input (config.data.pipeline, kd_jax/data/stream.py): teachers, student, results.

The same phases as in memory (study/teachers.py, study/student.py) and the same compiled steps
(kd_jax/train.py's supervised and fused distillation steps with the batch as an argument instead of
drawn from on-device data). What changes is where batches come from, `HostBatches`:

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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import checkpoint, ensemble, evaluation, metrics_log, parallel, progress, runtime
from kd_jax import workdir as workdir_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import placement
from kd_jax.data import stream as stream_lib
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model
from kd_jax.study import phases, student as student_lib, teachers as teachers_lib

# Stream roles, the second integer of a stream's seed (stream_lib.stream_seeds).
TEACHER_STREAM, STUDENT_STREAM, STATISTICS_STREAM = 0, 1, 2
# Recorded iterator positions kept behind the newest batch read (the loop's run-ahead and the device
# prefetch are a few steps; a save is never further behind than that).
POSITIONS_KEPT = 256


def position_iterator(state):
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
    self.positions.pop(self.pulled - POSITIONS_KEPT, None)
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
    return position_iterator(self.positions[step])


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
  if config.distill.method == "crd":
    raise KdJaxError("config.distill.method='crd' keeps a memory row per example and needs each "
                     "row's index, which streamed batches do not carry; use data.pipeline=memory.")


def host_augment(config) -> stream_lib.HostAugment:
  cfg = config.data.stream
  return stream_lib.HostAugment(crop_size=cfg.crop_size, train_augment=cfg.train_augment,
                                min_crop_scale=cfg.min_crop_scale,
                                eval_crop_ratio=cfg.eval_crop_ratio)


def read_options(config):
  import grain  # pylint: disable=g-import-not-at-top
  threads = config.data.stream.threads
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


class StreamedData:
  """A streamed dataset with what the phases need: record sources, host augmentation, statistics."""

  def __init__(self, config, source: stream_lib.StreamDataset, mesh):
    self.config, self.source, self.mesh = config, source, mesh
    self.augment = host_augment(config)
    if config.data.normalization == "unitcube":  # the original's [-1, 1], as in-memory runs'
      mean, std = placement.unitcube_statistics(1 if config.data.grayscale else 3)
    else:
      mean, std = stream_lib.channel_statistics(
          source.train, self.augment, config.data.stream.statistics_examples,
          stream_lib.stream_seeds(config.seed, STATISTICS_STREAM)[0], config.data.stream.threads)
    self.statistics = (mean, std)  # channel statistics, for normalization.json
    self.mean, self.std = parallel.replicate(placement.standardization(mean, std), mesh)

  def train_batches(self, batch_size: int, stream_key):
    return stream_lib.train_batches(
        self.source.train, self.augment, seeds=stream_lib.stream_seeds(*stream_key),
        global_batch=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count())

  def eval_batches(self, split: str, batch_size: int, size: int = 0):
    return stream_lib.eval_batches(
        getattr(self.source, split), self.augment, global_batch=batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(), size=size)


class HostBatches:
  """Batches of `data` read on the host, for one phase at a time: the teachers' group (each member
  its own stream, seeded (seed, TEACHER_STREAM, member)) or the student (seeded (seed,
  STUDENT_STREAM)). `restore` opens the phase's iterator at the checkpoint's data position, `bind`
  feeds the step from it, `close` stops its reader threads."""
  streamed = True

  def __init__(self, data: "StreamedData", batch_size: int):
    self.data, self.batch_size = data, batch_size
    self.iterator = self.feed = None

  @property
  def num_examples(self) -> int:
    return len(self.data.source.train)

  example_labels = None  # read on the host, batch by batch (CRD, which needs them, is refused)

  def _iterator(self, members):
    import grain  # pylint: disable=g-import-not-at-top
    config = self.data.config
    if members is None:
      batches = self.data.train_batches(self.batch_size, (config.seed, STUDENT_STREAM))
    else:
      streams = [self.data.train_batches(self.batch_size, (config.seed, TEACHER_STREAM, i))
                 for i in members]
      batches = grain.experimental.ZipMapDataset(streams).map(
          lambda batches: tuple(np.stack(parts) for parts in zip(*batches)))
    return iter(batches.to_iter_dataset(read_options(config)))

  def restore(self, manager, fresh, name: str, total: int, members=None):
    """(state, start) with the phase's iterator set to the position saved with the state."""
    self.iterator = self._iterator(members)
    sharding = (NamedSharding(self.data.mesh, P(None, parallel.DATA_AXIS)) if members is not None
                else parallel.batch_sharding(self.data.mesh))
    state, start = checkpoint.restore_latest(manager, fresh, data_iterator=self.iterator)
    position = self.iterator.get_state().get("next_index")
    if position != start:
      raise KdJaxError(f"[{name}] the checkpoint at step {start} holds data position {position}; "
                       f"delete {manager.directory} to restart this phase.")
    if start:
      print(f"[{name}] resuming at step {start}/{total} (data position {position})", flush=True)
    self.feed = DeviceFeed(self.iterator, (sharding, sharding), start,
                           self.data.config.data.stream.prefetch_batches)
    return state, start

  def data_position(self, step: int):
    return self.feed.position(step)

  def bind(self, step_fn, **fixed):
    def step(state):
      images, labels = self.feed.next()
      return step_fn(state, **fixed, images=images, labels=labels, mean=self.data.mean,
                     std=self.data.std)
    return step

  def close(self):
    self.iterator.close()


def evaluate(ctx, teacher, student, teacher_variables, student_variables, data) -> dict:
  """Clean test and train metrics of every teacher, the ensemble and the student (the results of
  study/memory.py's evaluate without its optional parts), from one streamed pass per split."""
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

  results = phases.empty_results(config)
  batch = parallel.batch_sharding(mesh)
  for split, size in (("test", config.evaluation.test_size), ("train", 0)):
    batches, count = data.eval_batches(split, batch_size, size)
    iterator = iter(batches.to_iter_dataset(read_options(config)))
    parts, done = [], 0
    started = last_report = time.time()
    for images, labels in iterator:
      images, labels = (jax.make_array_from_process_local_data(batch, x) for x in (images, labels))
      parts.append(per_example(teacher_variables, student_variables, images, labels))
      done += batch_size
      if time.time() - last_report > progress.PROGRESS_SECONDS:
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
  """Runs (or resumes) the study of a validated `config` whose data stream (config.data.pipeline)."""
  check_config(config)
  phases.teacher_policy(config)
  phases.distillation_policy(config)
  student_lib.distill_method(config, steps_per_epoch=1)  # its options, before the workdir
  source = stream_lib.open_source(config.data)
  phases.check_classes(source.num_classes)
  crop = config.data.stream.crop_size
  image_shape = (crop, crop, source.channels)
  compute_dtype = phases.compute_dtype(config)
  teacher = build_model(config.teacher.model, source.num_classes, compute_dtype)
  student = build_model(config.student.model, source.num_classes, compute_dtype)
  mesh = parallel.make_mesh()
  teacher_variables = None
  if config.teacher.load_from:
    teacher_variables = teachers_lib.load_teachers(teacher, config.teacher.load_from,
                                                   config.teacher.ensemble_size, image_shape, mesh)
  num_train, num_test = len(source.train), len(source.test)
  test_examples = phases.test_examples(config, num_test)
  phases.check_sizes(config, num_train, num_train, test_examples, mesh)
  for phase in ("teacher", "student"):
    if config[phase].batch_size % jax.process_count():
      raise KdJaxError(f"config.{phase}.batch_size={config[phase].batch_size} is not divisible by "
                       f"the {jax.process_count()} processes.")
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)
  data = StreamedData(config, source, mesh)
  ctx = phases.Context(
      config=config, workdir=workdir, mesh=mesh, log=metrics_log.MetricsLog(workdir),
      plan=phases.study_plan(config, num_train, num_train, num_train, test_examples),
      image_shape=image_shape, compute_dtype=compute_dtype)
  phases.announce(ctx, f"kd_jax: {source.name} streamed ({num_train} train / {num_test} test, "
                       f"{source.num_classes} classes, {crop}x{crop} crops)", resuming,
                  pipeline="stream")
  phases.write_normalization(ctx, *data.statistics, "uint8", source.num_classes,
                             center_crop={"size": crop,
                                          "crop_ratio": config.data.stream.eval_crop_ratio})
  if teacher_variables is None:
    teacher_variables = teachers_lib.trained_teachers(
        ctx, teacher, os.path.join(workdir, "teachers"), phases.seed_key(config, phases.TEACHERS),
        HostBatches(data, config.teacher.batch_size))
  student_variables = student_lib.distill_student(
      ctx, student, teacher, teacher_variables, os.path.join(workdir, "student"),
      phases.seed_key(config, phases.STUDENT), HostBatches(data, config.student.batch_size))
  results = evaluate(ctx, teacher, student, teacher_variables, student_variables, data)
  phases.add_compression(ctx, results, teacher, teacher_variables, student, student_variables)
  return phases.finish(ctx, results)
