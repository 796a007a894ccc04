"""A study whose data fit in device memory: teachers -> student -> evaluation -> results.json.

    dataset (host) -> DeviceData (kd_jax/data/placement.py)
      -> teachers (m, trained k at a time in one compiled step; study/teachers.py)
      -> [the ensemble's logits on the distillation set, once, when its images never change]
      -> student (the fused distillation step; study/student.py)
      -> evaluation of teachers, ensemble and student (kd_jax/evaluation.py) -> results.json

Every phase checkpoints with Orbax; rerunning the same command continues at the teacher group and step
where it stopped, and the compiled steps draw the same batches from (rng, step), so the result equals
an uninterrupted run's.
"""

import dataclasses
import functools
import os

import jax
import numpy as np

from kd_jax import checkpoint, evaluation, losses, metrics_log, parallel
from kd_jax import workdir as workdir_lib
from kd_jax.data import load_dataset, placement
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model
from kd_jax.study import phases, student as student_lib, teachers as teachers_lib


class DeviceBatches:
  """Batches that the compiled step draws itself from on-device data, by (rng, step); `inputs`
  are the step's other on-device arguments (the OOD images, the generator's variables)."""
  streamed = False
  data_position = None

  def __init__(self, data: placement.DeviceData, **inputs):
    self.data, self.inputs = data, inputs

  @property
  def num_examples(self) -> int:
    return int(self.data.train_images.shape[0])

  @property
  def example_labels(self):
    """Every example's label (-1: an appended OOD image), for a method that reads them (CRD)."""
    return self.data.train_labels

  def restore(self, manager, fresh, name: str, total: int, members=None):
    del members  # every member draws from the same data, by its own key
    state, start = checkpoint.restore_latest(manager, fresh)
    if start:
      print(f"[{name}] resuming at step {start}/{total}", flush=True)
    return state, start

  def bind(self, step_fn, **fixed):
    return functools.partial(step_fn, **fixed, data=self.data, **self.inputs)

  def close(self):
    pass


def distillation_targets(ctx: phases.Context, evaluator, teacher_variables,
                         label: str = "teachers"):
  """(member logits (m, N, C), ensemble logits (N, C)) on the distillation set, or (None, None)."""
  if not phases.caches_teacher_logits(ctx.config):
    return None, None
  data = ctx.distill_data
  member_logits = evaluator.teacher_logits(teacher_variables, data.train_images, data.mean, data.std,
                                           label=f"{label} on the distillation set")
  ensemble_logits = jax.jit(losses.ensemble_log_probs,
                            out_shardings=parallel.replicated_sharding(ctx.mesh))(member_logits)
  return member_logits, ensemble_logits


def evaluate(ctx: phases.Context, evaluator, teacher_variables, student_variables, *, labelled: int,
             train_member_logits=None) -> tuple:
  """Clean test and train metrics, plus augmented-stream fidelity and stage CKA when configured.

  Returns (results, the members' test logits). "train" is the student's distillation set without
  appended out-of-distribution images: its first `labelled` images (under data recycling it differs
  from the teachers' set); `train_member_logits`, the members' logits on the distillation set when
  distillation cached them, spare recomputing them.
  """
  config, data = ctx.config, ctx.distill_data
  results = phases.empty_results(config)
  splits = (("test", data.test_images, data.test_labels, None),
            ("train", data.train_images[:labelled], data.train_labels[:labelled],
             None if train_member_logits is None else train_member_logits[:, :labelled]))
  test_member_logits = None
  for split, images, labels, member_logits in splits:
    if member_logits is None:
      member_logits = evaluator.teacher_logits(teacher_variables, images, data.mean, data.std,
                                               label=f"teachers on {split}")
    student_logits = evaluator.student_logits(student_variables, images, data.mean, data.std,
                                              label=f"student on {split}")
    if split == "test":
      test_member_logits = member_logits
    evaluation.add_split(results, split, evaluation.split_metrics(member_logits, student_logits,
                                                                  labels))
  if config.evaluation.augmented_batches:
    augmented = evaluator.augmented_fidelity(
        teacher_variables, student_variables, data, phases.distillation_policy(config),
        phases.seed_key(config, phases.EVALUATION), config.evaluation.augmented_batches)
    results["student"].update({f"augmented_{k}": v for k, v in augmented.items()})
  if config.evaluation.cka_examples:
    images = data.test_images[:config.evaluation.cka_examples]
    results["student"].update(
        evaluator.stage_cka(teacher_variables, student_variables, images, data.mean, data.std))
  return results, test_member_logits


def start_metrics(ctx: phases.Context, evaluator, teacher_variables, start_variables, *,
                  labelled: int, train_member_logits=None) -> dict:
  """The student's test and train metrics at its start (before distillation), as
  start_<split>_<metric>: where an initialization (e.g. interpolation towards the teacher) already
  puts the student, so that its end can be read against it."""
  data, out = ctx.distill_data, {}
  for split, images, labels, member_logits in (
      ("test", data.test_images, data.test_labels, None),
      ("train", data.train_images[:labelled], data.train_labels[:labelled],
       None if train_member_logits is None else train_member_logits[:, :labelled])):
    if member_logits is None:
      member_logits = evaluator.teacher_logits(teacher_variables, images, data.mean, data.std,
                                               label=f"teachers on {split}")
    student_logits = evaluator.student_logits(start_variables, images, data.mean, data.std,
                                              label=f"student at its start on {split}")
    values = evaluation.split_metrics(member_logits, student_logits, labels)["student"]
    out.update({f"start_{split}_{k}": v for k, v in values.items()})
  return out


def independent_baseline(ctx: phases.Context, evaluator, teacher, student,
                         test_member_logits) -> dict:
  """A second student, distilled the same way from an independently trained ensemble; its agreement
  with the FIRST ensemble (whose test logits are `test_member_logits`) is what the real student's
  agreement should be read against."""
  config, data = ctx.config, ctx.distill_data
  directory = os.path.join(ctx.workdir, "independent")
  independent_teachers = teachers_lib.trained_teachers(
      ctx, teacher, os.path.join(directory, "teachers"),
      phases.seed_key(config, phases.INDEPENDENT_TEACHERS), DeviceBatches(ctx.teacher_data),
      label="independent teachers")
  _, targets = distillation_targets(ctx, evaluator, independent_teachers,
                                    label="independent teachers")
  independent_student = student_lib.distill_student(
      ctx, student, teacher, independent_teachers, os.path.join(directory, "student"),
      phases.seed_key(config, phases.INDEPENDENT_STUDENT), student_batches(ctx),
      cached_teacher_logits=targets, label="independent student")
  student_logits = evaluator.student_logits(independent_student, data.test_images, data.mean,
                                            data.std, label="independent student on test")
  values = evaluation.split_metrics(test_member_logits, student_logits, data.test_labels)["student"]
  return {f"independent_test_{k}": v for k, v in values.items()}


def student_batches(ctx: phases.Context) -> DeviceBatches:
  """The distillation set, with the OOD images and the generator's variables the step reads."""
  return DeviceBatches(ctx.distill_data, ood_images=ctx.ood_images,
                       generator_variables=ctx.synthetic[1] if ctx.synthetic else None)


def load_inputs(config):
  """(dataset, OOD dataset or None, synthetic (sampler, generator variables) or None): everything
  read from disk, checked before the workdir is touched."""
  dataset = load_dataset(config.data)
  phases.check_classes(dataset.num_classes, dataset.train_labels, dataset.test_labels)
  ood = (load_dataset(config.distill.ood_data, key="distill.ood_data")
         if config.distill.ood_data.source else None)
  image_shape = tuple(dataset.train_images.shape[1:])
  if ood is not None and tuple(ood.train_images.shape[1:]) != image_shape:
    raise KdJaxError(f"config.distill.ood_data images have shape {ood.train_images.shape[1:]}, the "
                     f"training images {image_shape}; choose an OOD dataset of the same image size.")
  synthetic = None
  if config.distill.synthetic_workdir:
    from kd_jax import gan  # pylint: disable=g-import-not-at-top (only GAN-data runs need it)
    sampler, generator_variables = gan.load_generator(config.distill.synthetic_workdir, image_shape)
    synthetic = (sampler(config.distill.synthetic_batch_norm), generator_variables)
  return dataset, ood, synthetic


@dataclasses.dataclass
class Splits:
  """Which train examples each phase uses (kd_jax/data/placement.py), and the OOD images appended to
  the distillation set (or None)."""
  teacher: np.ndarray
  distill: np.ndarray
  appended_ood: object = None

  @property
  def distill_examples(self) -> int:  # appended OOD images included
    return int(self.distill.size + (0 if self.appended_ood is None else len(self.appended_ood)))


def data_splits(config, dataset, ood) -> Splits:
  num_train = dataset.train_images.shape[0]
  seed = placement.split_seed(config.data, config.seed)
  appended_ood = None
  if ood is not None and config.distill.ood_mode == "append":
    appended_ood = placement.appended_ood_images(ood, config.distill.ood_examples, seed)
  stratify = config.teacher.get("stratify", False)
  return Splits(
      teacher=placement.split_indices(num_train, config.teacher.data_split, seed,
                                      config.teacher.train_examples,
                                      labels=dataset.train_labels if stratify else None),
      distill=placement.split_indices(num_train, config.distill.data_split, seed,
                                      config.distill.get("train_examples", 0), stream=2,
                                      what="distill"),
      appended_ood=appended_ood)


def place_data(config, dataset, ood, splits: Splits, statistics, mesh) -> dict:
  """The Context fields of the data on the devices: teacher_data, distill_data, ood_images;
  `statistics` are the train set's channel statistics (placement.channel_statistics)."""
  test_size = config.evaluation.test_size
  teacher_data = placement.device_data(dataset, splits.teacher, mesh, statistics, test_size=test_size)
  same_data = np.array_equal(splits.teacher, splits.distill) and splits.appended_ood is None
  distill_data = teacher_data if same_data else placement.device_data(
      dataset, splits.distill, mesh, statistics, test_size=test_size,
      extra_images=splits.appended_ood)
  ood_images = (parallel.replicate(ood.train_images, mesh)
                if ood is not None and config.distill.ood_mode == "replace" else None)
  return dict(teacher_data=teacher_data, distill_data=distill_data, ood_images=ood_images)


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the in-memory study of a validated `config` in `workdir`; returns its results."""
  # Everything that can fail on the user's input happens before the workdir is touched.
  phases.teacher_policy(config)
  phases.distillation_policy(config)
  student_lib.distill_method(config, steps_per_epoch=1)  # its options, before the workdir
  dataset, ood, synthetic = load_inputs(config)
  image_shape = tuple(dataset.train_images.shape[1:])
  compute_dtype = phases.compute_dtype(config)
  num_tokens = getattr(dataset, "num_tokens", 0)  # text: the embeddings' rows (kd_jax/data/text.py)
  teacher = build_model(config.teacher.model, dataset.num_classes, compute_dtype, num_tokens)
  student = build_model(config.student.model, dataset.num_classes, compute_dtype, num_tokens)
  mesh = parallel.make_mesh()
  teacher_variables = None
  if config.teacher.load_from:
    teacher_variables = teachers_lib.load_teachers(teacher, config.teacher.load_from,
                                                   config.teacher.ensemble_size, image_shape, mesh)
  splits = data_splits(config, dataset, ood)
  teacher_examples, distill_examples = int(splits.teacher.size), splits.distill_examples
  labelled = int(splits.distill.size)
  test_examples = phases.test_examples(config, int(dataset.test_images.shape[0]))
  phases.check_sizes(config, teacher_examples, distill_examples, test_examples, mesh)
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)

  statistics = placement.normalization_statistics(config.data, dataset.train_images)
  ctx = phases.Context(
      config=config, workdir=workdir, mesh=mesh, log=metrics_log.MetricsLog(workdir),
      plan=phases.study_plan(config, teacher_examples, distill_examples, labelled, test_examples),
      image_shape=image_shape, compute_dtype=compute_dtype,
      synthetic=None if synthetic is None else (synthetic[0],
                                                parallel.replicate(synthetic[1], mesh)),
      **place_data(config, dataset, ood, splits, statistics, mesh))
  phases.announce(ctx, f"kd_jax: {dataset.name} ({dataset.train_images.shape[0]} train / "
                       f"{dataset.test_images.shape[0]} test, {dataset.num_classes} classes)",
                  resuming)
  phases.write_normalization(ctx, *statistics, str(dataset.train_images.dtype), dataset.num_classes,
                             num_tokens)

  if teacher_variables is None:
    teacher_variables = teachers_lib.trained_teachers(
        ctx, teacher, os.path.join(workdir, "teachers"), phases.seed_key(config, phases.TEACHERS),
        DeviceBatches(ctx.teacher_data))
  evaluator = evaluation.Evaluator(
      teacher, student, mesh=mesh, compute_dtype=compute_dtype, method=config.ensemble_method,
      batch_size=evaluation.eval_batch_size(
          config.eval_batch_size, min(int(ctx.distill_data.test_images.shape[0]), labelled), mesh))
  train_member_logits, targets = distillation_targets(ctx, evaluator, teacher_variables)
  student_variables = student_lib.distill_student(
      ctx, student, teacher, teacher_variables, os.path.join(workdir, "student"),
      phases.seed_key(config, phases.STUDENT), student_batches(ctx), cached_teacher_logits=targets)
  # The first `labelled` images of the distillation set are labelled; appended OOD ones follow.
  results, test_member_logits = evaluate(ctx, evaluator, teacher_variables, student_variables,
                                         labelled=labelled, train_member_logits=train_member_logits)
  results["student"].update(student_lib.best_evaluation(ctx, distill_examples, results["student"]))
  if config.evaluation.student_start:
    results["student"].update(start_metrics(
        ctx, evaluator, teacher_variables,
        student_lib.start_variables(ctx, student, teacher, teacher_variables,
                                    phases.seed_key(config, phases.STUDENT)),
        labelled=labelled, train_member_logits=train_member_logits))
  if config.evaluation.independent_student:
    results["student"].update(
        independent_baseline(ctx, evaluator, teacher, student, test_member_logits))
  phases.add_compression(ctx, results, teacher, teacher_variables, student, student_variables)
  return phases.finish(ctx, results)
