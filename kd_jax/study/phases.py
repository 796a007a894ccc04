"""What every phase of a study shares: the run context, the seed streams, schedule lengths, teacher
groups, the study plan, the augmentation policies, and `fit`, the one way a phase trains.

The drivers (memory.py, streamed.py, gan.py) build a `Context` once and pass it to the phases
(teachers.py, student.py); nothing here knows whether batches come from device memory or a stream.
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import artifact, compression, loop, metrics_log, parallel, runtime, train
from kd_jax import results as results_lib
from kd_jax import workdir as workdir_lib
from kd_jax.data import augment as augment_lib
from kd_jax import augment_policies as policy_lib
from kd_jax.config import FEATURE_METHODS
from kd_jax.distill import synthetic_count
from kd_jax.errors import DivergedError, KdJaxError
from kd_jax.study_plan import PlannedPhase, StudyPlan

# fold_in tags under the seed's key (a workdir's batches depend on them: never renumber). Teacher i of
# the main ensemble uses (TEACHERS, i); the independent baseline's ensemble and student get streams of
# their own; 4 was a retired stream, kept so that evaluations draw the batches they always did. The
# student key's own tags (BatchNorm re-estimation, a distillation method's init) are study/student.py's.
TEACHERS, STUDENT, INDEPENDENT_TEACHERS, INDEPENDENT_STUDENT = range(4)
EVALUATION = 5


@dataclasses.dataclass
class Context:
  """What the phases of one run share; each field's comment names the phases that read it."""
  config: object  # all
  workdir: str  # all: checkpoints, metrics, results
  mesh: object  # all compiled steps
  log: metrics_log.MetricsLog  # all
  plan: StudyPlan = None  # every phase of the study, for the study's ETA in progress lines
  image_shape: tuple = ()  # model initialization
  compute_dtype: object = jnp.float32  # all compiled steps
  # In memory only (kd_jax/data/placement.py): teacher training and the interpolated student's
  # BatchNorm re-estimation read the teachers' part of the train set + test set; distillation and
  # evaluation the student's part (+ appended OOD images) + test set.
  teacher_data: object = None
  distill_data: object = None
  ood_images: object = None  # distillation with ood_mode 'replace': uint8 OOD images on device
  # Distillation with synthetic data (distill.synthetic_workdir): (the generator's sampler,
  # kd_jax.gan.make_sampler's, and its variables on device), or None.
  synthetic: tuple = None


def seed_key(config, stream: int):
  """The key of one of the run's seed streams (TEACHERS, STUDENT, ...)."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)


def compute_dtype(config):
  return jnp.bfloat16 if config.precision == "bf16" else jnp.float32


def schedule_length(phase_cfg, num_train: int, phase: str, batch_size: int = 0):
  """(total steps, steps per epoch) of a phase; `batch_size` > 0: the training images per step when
  fewer than phase_cfg.batch_size (the rest of the student's batch synthetic)."""
  steps_per_epoch = num_train // (batch_size or phase_cfg.batch_size)
  if steps_per_epoch == 0:
    raise KdJaxError(f"config.{phase}.batch_size={phase_cfg.batch_size} exceeds the {num_train} "
                     "training examples; lower it.")
  total = phase_cfg.steps if phase_cfg.steps > 0 else phase_cfg.epochs * steps_per_epoch
  return int(total), steps_per_epoch


def teacher_groups(config) -> list:
  """The members trained together in one compiled step: [[0, 1, 2], [3, 4]] for m=5, k=3."""
  m = config.teacher.ensemble_size
  k = config.teacher.members_per_step or m
  return [list(range(first, min(first + k, m))) for first in range(0, m, k)]


def teacher_group_name(label: str, members, ensemble_size: int) -> str:
  """A teacher group's phase name in progress lines and the study plan, e.g. 'teachers 1-3/5'."""
  return f"{label} {members[0] + 1}-{members[-1] + 1}/{ensemble_size}"


def teacher_policy(config):
  """The teachers' augmentation: config.data.augment with the policies' default options (the options in
  config.distill shape the distillation data only)."""
  return augment_lib.make_policy(config.data.augment)


def distillation_policy(config):
  """The student's distillation data: config.distill.augment (or the teachers' policy's name), with the
  options of config.distill."""
  return augment_lib.make_policy(config.distill.augment or config.data.augment, config.distill)


def caches_teacher_logits(config) -> bool:
  """Whether the ensemble's logits on the distillation set are computed once instead of every step:
  only when the distillation images never change (no augmentation, no per-step OOD draws) and the
  method reads nothing but logits."""
  name = config.distill.augment or config.data.augment
  per_step_ood = bool(config.distill.ood_data.source) and config.distill.ood_mode == "replace"
  return (config.distill.cache_teacher_logits and not policy_lib.parse_policy(name)
          and not per_step_ood and not config.distill.synthetic_workdir
          and config.distill.method not in FEATURE_METHODS)


def real_batch_size(config) -> int:
  """The student's training images per step: its batch size less the synthetic images, if any."""
  return config.student.batch_size - synthetic_count(config.distill.synthetic_fraction,
                                                     config.student.batch_size)


def study_plan(config, teacher_examples: int, distill_examples: int, labelled_examples: int,
               test_examples: int) -> StudyPlan:
  """Every phase a kd study goes through, in order, with its steps and images.

  `distill_examples` counts appended out-of-distribution images, `labelled_examples` does not
  (the evaluation's train split). Evaluation: every teacher and the student on the test set and the
  labelled distillation set (when distillation caches the teachers' logits, their pass on the
  distillation set runs before the student instead: the same images); the independent baseline's
  evaluation is its teachers' cached logits, if any, and its student on the test set.
  """
  m = config.teacher.ensemble_size
  teacher_steps, _ = schedule_length(config.teacher, teacher_examples, "teacher")
  student_steps, _ = schedule_length(config.student, distill_examples, "student",
                                     real_batch_size(config))

  def teachers(label):
    return [PlannedPhase(teacher_group_name(label, members, m), "teachers", teacher_steps,
                         teacher_steps * config.teacher.batch_size * len(members))
            for members in teacher_groups(config)]

  def student(label):
    return PlannedPhase(label, "student", student_steps, student_steps * config.student.batch_size)

  phases = [] if config.teacher.load_from else teachers("teachers")
  phases += [student("student"),
             PlannedPhase("evaluation", "evaluation", 0,
                          (m + 1) * (test_examples + labelled_examples))]
  if config.evaluation.independent_student:
    cached = m * distill_examples if caches_teacher_logits(config) else 0
    phases += teachers("independent teachers") + [
        student("independent student"),
        PlannedPhase("independent evaluation", "evaluation", 0, cached + test_examples)]
  return StudyPlan(phases)


def check_classes(num_classes: int, train_labels=None, test_labels=None) -> None:
  """Refuses data of fewer than 2 classes (every metric would read 100%), with one line; warns (one
  line on stderr, the run goes on) about classes that occur in the test set but not in the training
  set: no model can learn them, which bounds the test accuracy, but evaluating on them is valid."""
  if num_classes < 2:
    raise KdJaxError(f"config.data holds {num_classes} class{'es' if num_classes != 1 else ''}; "
                     "classification needs at least 2 (an image folder: one folder per class under "
                     "train/ and test/).")
  if train_labels is None or test_labels is None:
    return
  unseen = np.setdiff1d(np.unique(test_labels), np.unique(train_labels))
  if unseen.size:
    share = float(np.isin(test_labels, unseen).mean())
    print(f"warning: {unseen.size} of the {num_classes} classes (labels "
          f"{', '.join(map(str, unseen[:10]))}{', ...' if unseen.size > 10 else ''}) have test "
          "examples but no training examples; no model can learn them, so test accuracy is at "
          f"most {100 * (1 - share):.2f}%", file=sys.stderr, flush=True)


def test_examples(config, num_test: int) -> int:
  """The test examples the evaluation reads: config.evaluation.test_size (0: all `num_test`); a
  test_size beyond the test set is a KdJaxError (before any work)."""
  test_size = config.evaluation.test_size
  if test_size > num_test:
    raise KdJaxError(f"config.evaluation.test_size={test_size} exceeds the {num_test} test "
                     "examples; lower it, or 0 for the whole test set.")
  return test_size or num_test


def check_sizes(config, teacher_examples: int, distill_examples: int, test_examples: int,
                mesh) -> None:
  """Raises KdJaxError where the config does not fit the data or the devices (before any work)."""
  for phase, examples in (("teacher", teacher_examples), ("student", distill_examples)):
    schedule_length(config[phase], examples, phase,
                    real_batch_size(config) if phase == "student" else 0)
    parallel.check_batch_size(config[phase].batch_size, mesh, f"config.{phase}.batch_size")
  devices = mesh.devices.size
  if min(test_examples, distill_examples) < devices:
    raise KdJaxError(f"evaluation needs at least one example per device: {devices} devices, "
                     f"{min(test_examples, distill_examples)} examples; use fewer devices.")


def loop_settings(config) -> loop.Settings:
  return loop.Settings(log_every=config.log_every_steps,
                       checkpoint_every=config.checkpoint_every_steps,
                       profile_steps=config.profile_steps)


def fit(ctx: Context, step, state, phase: loop.Phase, manager, start: int, batches=None):
  """loop.fit with the run's logging, checkpoint and profiling settings, the phase's data position
  saved with each checkpoint when `batches` stream (study/streamed.py); a divergence leaves
  diverged.json in the workdir. Closes the phase's manager and batch source."""
  phase.profile_dir = os.path.join(ctx.workdir, "profile", metrics_log.phase_tag(phase.name))
  if batches is not None:
    phase.data_position = batches.data_position
  try:
    return loop.fit(step, state, phase=phase, manager=manager, start=start, log=ctx.log,
                    settings=loop_settings(ctx.config), study=ctx.plan)
  except DivergedError as e:
    workdir_lib.write_diverged(ctx.workdir, str(e))
    raise
  finally:
    manager.close()
    if batches is not None:
      batches.close()


def announce(ctx: Context, description: str, resuming: bool, **start_record) -> None:
  """The run's first lines: what runs where, and the plan; and its start record in metrics.jsonl."""
  print(f"{description} on {ctx.mesh.devices.size} {jax.default_backend()} device(s); workdir "
        f"{ctx.workdir}{' (resuming)' if resuming else ''}", flush=True)
  if ctx.plan is not None:
    print(ctx.plan.describe(), flush=True)
  ctx.log.write({"event": "resume" if resuming else "start", "devices": int(ctx.mesh.devices.size),
                 "backend": jax.default_backend(), **start_record})


def add_compression(ctx: Context, results: dict, teacher, teacher_variables, student,
                    student_variables) -> dict:
  """`results` with what distillation saved (kd_jax/compression.py: sizes, FLOPs, latencies of the
  teachers, the ensemble and the student), unless config.evaluation turns it off."""
  section = compression.measure(ctx.config, teacher, teacher_variables, student, student_variables,
                                ctx.image_shape, results)
  if section is not None:
    results["compression"] = section
  return results


def write_normalization(ctx: Context, mean, std, input_dtype: str, num_classes: int,
                        num_tokens: int = 0, center_crop=None) -> None:
  """normalization.json: the inputs the run's models expect (what kd_jax.export bakes in)."""
  if workdir_lib.is_main_process():
    artifact.write_normalization(ctx.workdir, artifact.normalization_record(
        mean, std, ctx.image_shape, input_dtype, num_classes, num_tokens, center_crop))


def finish(ctx: Context, results: dict) -> dict:
  """Logs, writes and prints a finished kd study's results; releases the workdir."""
  ctx.log.write({"phase": "evaluation", **results_lib.flatten_results(results)})
  runtime.raise_if_stopped()  # a signal during evaluation: no results from an interrupted run
  workdir_lib.write_results(ctx.workdir, results)
  workdir_lib.release(ctx.workdir)  # (a run that fails keeps its lock until the process ends)
  print(results_lib.results_table(results), flush=True)
  return results


def empty_results(config) -> dict:
  return {"teachers": [{} for _ in range(config.teacher.ensemble_size)], "ensemble": {},
          "student": {}}


def model_state_init(model, tx, ctx: Context):
  """Compiled init of one model's TrainState from a key, replicated on the mesh."""
  return jax.jit(lambda r: train.create_state(model, tx, r, ctx.image_shape),
                 out_shardings=parallel.replicated_sharding(ctx.mesh))
