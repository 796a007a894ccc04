"""One study, resumable: train (or load) the teacher ensemble, distill the student, evaluate, report.

    teachers (m, trained k at a time in one compiled step) -> student (fused distillation step)
      -> evaluation of teachers, ensemble and student (kd_jax/evaluation.py) -> results.json

Every phase checkpoints with Orbax; rerunning the same command continues at the teacher group and step
where it stopped, and replays the same batches, so the result equals an uninterrupted run's.
"""

import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import checkpoint, evaluation, losses, loop, parallel, results as results_lib, runtime
from kd_jax import tensorboard, train
from kd_jax import workdir as workdir_lib
from kd_jax import config as config_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import stream as stream_lib
from kd_jax.data import load_dataset
from kd_jax.errors import DivergedError, KdJaxError
from kd_jax.models import build_model
from kd_jax.study_plan import PlannedPhase, StudyPlan

# fold_in tags under the seed's key. Teacher i of the main ensemble uses (TEACHERS, i); the independent
# baseline's ensemble and student get streams of their own.
_TEACHERS, _STUDENT, _INDEPENDENT_TEACHERS, _INDEPENDENT_STUDENT = range(4)
_EVALUATION = 5  # 4 was a retired stream; kept so that evaluations draw the batches they always did
# fold_in tag under the student's key for the BatchNorm re-estimation pass of an interpolated student.
_BATCH_STATS = 1
# The original code's floor for the learning rate of a student interpolated towards its teacher.
INTERPOLATED_LR_FLOOR = 1e-6


@dataclasses.dataclass
class Context:
  """What the phases of one run share; each field's comment names the phases that read it."""
  config: object  # all
  workdir: str  # all: checkpoints, metrics, results
  mesh: object  # all compiled steps
  # Teacher training, and the interpolated student's BatchNorm re-estimation: the teachers' part of the
  # train set (data recycling) + test set.
  teacher_data: train.DeviceData
  # Distillation and evaluation: the student's part of the train set (+ appended OOD images) + test set.
  distill_data: train.DeviceData
  ood_images: object  # distillation with ood_mode 'replace': uint8 OOD images on device, or None
  image_shape: tuple  # model initialization
  compute_dtype: object  # all compiled steps
  log: workdir_lib.MetricsLog  # all
  plan: StudyPlan  # every phase of the study, for the study's ETA in progress lines
  # Distillation with synthetic data (distill.synthetic_workdir): (the generator's sampler,
  # kd_jax.gan.make_sampler's, and its variables on device), or None.
  synthetic: tuple = None


def _seed_key(config, stream: int):
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)


def split_indices(num_examples: int, split: str, split_seed: int, examples: int = 0) -> np.ndarray:
  """Indices of 'all' the train set, or of its seeded half 'd0' or 'd1' (data recycling), sorted.

  examples > 0 keeps a seeded subset of that many of them (teacher.train_examples: a few labelled
  images). The subset uses its own generator, so it does not change the d0 / d1 halves.
  """
  if split == "all":
    indices = np.arange(num_examples)
  else:
    order = np.random.default_rng(split_seed).permutation(num_examples)
    half = num_examples // 2
    indices = np.sort(order[:half] if split == "d0" else order[half:])
  if examples <= 0:
    return indices
  if examples > indices.size:
    raise KdJaxError(f"config.teacher.train_examples={examples} exceeds the {indices.size} examples "
                     f"of data split {split!r}; lower it (0 = all).")
  subset = np.random.default_rng([split_seed, 1]).choice(indices.size, examples, replace=False)
  return np.sort(indices[subset])


def channel_statistics(images, chunk: int = 4096):
  """Per-channel mean and standard deviation of uint8 images (N, H, W, C) scaled to [0, 1]
  (augment.channel_moments over chunks of `chunk` images; in float32, on CIFAR-10's 50,000 images
  every channel's "mean" came out 0.32768)."""
  if images.dtype != np.uint8:  # token ids (text): nothing to standardize (augment.normalize)
    return np.zeros(1), np.ones(1)
  return augment_lib.channel_moments(
      images[start:start + chunk] for start in range(0, images.shape[0], chunk))


def standardization(mean, std) -> tuple:
  """The float32 (mean, std) that augment.normalize uses, from channel statistics; 1e-8 is added to
  std so that a constant channel stays finite."""
  return np.asarray(mean).astype(np.float32), (np.asarray(std) + 1e-8).astype(np.float32)


def device_data(dataset, train_indices, mesh, statistics, *, test_size: int = 0, extra_images=None
                ) -> train.DeviceData:
  """The dataset on device, with `statistics`: (mean, std) of the full training set
  (`channel_statistics`), computed once for every split a run places.

  `extra_images` (out-of-distribution images without labels) are appended to the train split with
  label -1; `test_size` > 0 keeps the first test_size test examples (smoke runs).
  """
  mean, std = standardization(*statistics)
  train_images = dataset.train_images[train_indices]
  train_labels = dataset.train_labels[train_indices].astype(np.int32)
  if extra_images is not None:
    train_images = np.concatenate([train_images, extra_images])
    train_labels = np.concatenate([train_labels, np.full(len(extra_images), -1, np.int32)])
  test_end = test_size or None
  return parallel.replicate(train.DeviceData(
      train_images=train_images, train_labels=train_labels,
      test_images=dataset.test_images[:test_end],
      test_labels=dataset.test_labels[:test_end].astype(np.int32),
      mean=mean, std=std), mesh)


def appended_ood_images(ood_dataset, count: int, seed: int):
  """The original code's out-of-distribution set: `count` images of a seeded shuffle of the OOD train
  split, fixed for the whole run and appended to the distillation set (so every in-distribution image is
  still seen once per epoch)."""
  images = ood_dataset.train_images
  if count > images.shape[0]:
    raise KdJaxError(f"config.distill.ood_examples={count} exceeds the {images.shape[0]} images of "
                     "config.distill.ood_data; lower it.")
  return images[np.random.default_rng(seed).permutation(images.shape[0])[:count]]


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


def study_plan(config, teacher_examples: int, distill_examples: int, labelled_examples: int,
               test_examples: int) -> StudyPlan:
  """Every phase `run` goes through, in order, with its steps and images.

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


def _member_dir(teachers_dir: str, index: int) -> str:
  return os.path.join(teachers_dir, f"member_{index}")


def _variables_template(model, image_shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), train.dummy_input(model, image_shape), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)


def _teacher_init_fn(ctx: Context, model, tx):
  """Compiled init of a group of members from their keys (vmap: it runs once, speed is moot)."""
  return jax.jit(
      lambda keys: jax.vmap(lambda rng: train.create_state(model, tx, rng, ctx.image_shape))(keys),
      out_shardings=parallel.replicated_sharding(ctx.mesh))


def _teacher_optimizer(ctx: Context):
  cfg = ctx.config.teacher
  total, steps_per_epoch = schedule_length(cfg, ctx.teacher_data.train_images.shape[0], "teacher")
  return train.make_optimizer(cfg.optimizer, total, steps_per_epoch), total, steps_per_epoch


def train_teachers(ctx: Context, model, teachers_dir: str, teachers_key, label: str = "teachers"):
  """Trains the m teachers, k per compiled step, saving each in teachers_dir/member_<i>."""
  cfg = ctx.config.teacher
  tx, total, steps_per_epoch = _teacher_optimizer(ctx)
  step_fn = train.make_supervised_step(
      model, tx, batch_size=cfg.batch_size,
      augment=teacher_policy(ctx.config),
      mesh=ctx.mesh, compute_dtype=ctx.compute_dtype, method=ctx.config.ensemble_method)
  init_members = _teacher_init_fn(ctx, model, tx)

  for members in teacher_groups(ctx.config):
    if all(os.path.isdir(_member_dir(teachers_dir, i)) for i in members):
      continue
    name = teacher_group_name(label, members, cfg.ensemble_size)
    manager = checkpoint.make_manager(
        os.path.join(teachers_dir, f"train_{members[0]}-{members[-1]}"))
    fresh = init_members(np.stack([jax.random.fold_in(teachers_key, i) for i in members]))
    state, start = checkpoint.restore_latest(manager, fresh)
    if start:
      print(f"[{name}] resuming at step {start}/{total}", flush=True)
    phase = loop.Phase(name=name, total=total, steps_per_epoch=steps_per_epoch,
                       images_per_step=cfg.batch_size * len(members), log_fields={"members": members},
                       learning_rate=train.learning_rate_schedule(cfg.optimizer, total, steps_per_epoch),
                       hint="config.teacher.optimizer.learning_rate")
    state = _fit(ctx, functools.partial(step_fn, data=ctx.teacher_data), state, phase, manager, start)
    trained = jax.device_get(train.model_variables(state))
    with runtime.deferred_signals():  # a member's save completes before a signal stops the run
      for position, index in enumerate(members):
        checkpoint.save_variables(_member_dir(teachers_dir, index),
                                  jax.tree.map(lambda x: x[position], trained))
    runtime.raise_if_stopped()


def load_teachers(model, teachers_dir: str, ensemble_size: int, image_shape, mesh):
  """Loads members 0..m-1 from `teachers_dir` (or a workdir holding teachers/) as stacked variables."""
  if os.path.isdir(os.path.join(teachers_dir, "teachers")):
    teachers_dir = os.path.join(teachers_dir, "teachers")
  template = _variables_template(model, image_shape)
  members = [checkpoint.load_variables(_member_dir(teachers_dir, i), template)
             for i in range(ensemble_size)]
  return parallel.replicate(jax.tree.map(lambda *xs: np.stack(xs), *members), mesh)


def student_optimizer_config(config):
  """The student's optimizer config; with the original's rule for a student interpolated towards the
  trained teacher (student.init='interpolate', init_scale_lr), its learning rate scaled by (1 - lambda)
  with a floor of INTERPOLATED_LR_FLOOR, so a student that starts near the teacher is not kicked away."""
  cfg = config.student.optimizer
  if config.student.init != "interpolate" or not config.student.init_scale_lr:
    return cfg
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.learning_rate = max(cfg.learning_rate * (1.0 - config.student.init_lambda),
                          INTERPOLATED_LR_FLOOR)
  cfg.final_learning_rate = min(cfg.final_learning_rate, cfg.learning_rate)
  return cfg


def reestimate_batch_stats(ctx: Context, model, state: train.TrainState, rng) -> train.TrainState:
  """Recomputes BatchNorm running statistics with one train-mode pass over the teachers' training data.

  The original code does this for a student initialized from teacher weights: mixing two networks'
  weights also mixes what their layers output, so neither network's statistics fit the mixture. The
  pass uses the teachers' augmentation policy and the student's batch size, updates only the statistics
  (momentum as in training), and leaves the weights unchanged.
  """
  if not state.batch_stats:
    return state
  data, batch_size = ctx.teacher_data, ctx.config.student.batch_size
  policy = teacher_policy(ctx.config)

  @jax.jit
  def update(batch_stats, step):
    images, _ = train.sample_batch(rng, step, data.train_images, data.train_labels, batch_size)
    x = augment_lib.normalize(policy(jax.random.fold_in(rng, step), images), data.mean, data.std,
                              ctx.compute_dtype)
    x = parallel.shard_batch(x, ctx.mesh)
    _, updates = model.apply({"params": state.params, "batch_stats": batch_stats}, x, train=True,
                             mutable=["batch_stats"])
    return updates["batch_stats"]

  batch_stats = state.batch_stats
  for step in range(data.train_images.shape[0] // batch_size):
    batch_stats = update(batch_stats, step)
  return state.replace(batch_stats=batch_stats)


def trained_teachers(ctx: Context, model, teachers_dir: str, teachers_key, label: str = "teachers"):
  """Trains (or finishes training) the ensemble in teachers_dir and loads it as stacked variables."""
  return load_trained_teachers(
      ctx, model, teachers_dir, lambda: train_teachers(ctx, model, teachers_dir, teachers_key, label))


def load_trained_teachers(ctx, model, teachers_dir: str, train_missing):
  """train_missing() (which trains the members not yet saved), then the stacked ensemble.

  A member checkpoint that cannot be read is moved aside (one warning line) and written again from its
  group's last training checkpoint by the next train_missing().
  """
  for _ in range(ctx.config.teacher.ensemble_size + 1):
    train_missing()
    try:
      return load_teachers(model, teachers_dir, ctx.config.teacher.ensemble_size, ctx.image_shape,
                           ctx.mesh)
    except checkpoint.UnreadableCheckpoint as e:
      moved = checkpoint.move_aside(e.path)
      print(f"warning: {e} Moved aside to {os.path.basename(moved)}; saving it again from its "
            "group's training checkpoint", file=sys.stderr, flush=True)
  raise KdJaxError(f"the teacher checkpoints in {teachers_dir} stay unreadable; delete the folder "
                   "to train the teachers again.")


def initial_student(ctx: Context, student, teacher, tx, rng, teacher_variables):
  """The student's starting state: random, or interpolated towards / set to the teacher's weights."""
  config = ctx.config
  state = jax.jit(lambda r: train.create_state(student, tx, r, ctx.image_shape),
                  out_shardings=parallel.replicated_sharding(ctx.mesh))(rng)
  if config.student.init == "random":
    return state
  if config.student.init == "teacher_initial":
    # Member 0's initialization, regenerated from its key: the weights before any teacher training.
    teacher_tx, _, _ = _teacher_optimizer(ctx)
    first = _teacher_init_fn(ctx, teacher, teacher_tx)(
        np.stack([jax.random.fold_in(_seed_key(config, _TEACHERS), 0)]))
    target = jax.tree.map(lambda x: x[0], train.model_variables(first))
    lam = 1.0
  else:
    target = jax.tree.map(lambda x: x[0], teacher_variables)
    lam = config.student.init_lambda
  mix = lambda t, r: lam * t + (1.0 - lam) * r  # noqa: E731
  params = jax.tree.map(mix, target["params"], state.params)
  batch_stats = jax.tree.map(mix, target.get("batch_stats", {}), state.batch_stats)
  state = state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params))
  if config.student.init_batch_stats == "reestimate":
    state = reestimate_batch_stats(ctx, student, state, jax.random.fold_in(rng, _BATCH_STATS))
  return state


def distill_student(ctx: Context, student, teacher, teacher_variables, student_dir: str, rng, *,
                    cached_teacher_logits=None, label: str = "student"):
  """Distills the student from the stacked `teacher_variables` (or from `cached_teacher_logits`, the
  ensemble's (N, C) logits on the distillation set, when its images are not augmented)."""
  cfg, distill = ctx.config.student, ctx.config.distill
  total, steps_per_epoch = schedule_length(cfg, ctx.distill_data.train_images.shape[0], "student",
                                           real_batch_size(ctx.config))
  optimizer_cfg = student_optimizer_config(ctx.config)
  tx = train.make_optimizer(optimizer_cfg, total, steps_per_epoch)
  step_fn = train.make_distill_step(
      student, teacher, tx, batch_size=cfg.batch_size, augment=distillation_policy(ctx.config),
      mesh=ctx.mesh, temperature=distill.temperature, alpha=distill.alpha, loss_kind=distill.loss,
      ood_fraction=distill.ood_ratio if distill.ood_mode == "replace" else 0.0,
      cached_teacher_logits=cached_teacher_logits is not None, compute_dtype=ctx.compute_dtype,
      method=ctx.config.ensemble_method,
      synthetic_sampler=ctx.synthetic[0] if ctx.synthetic else None,
      synthetic_fraction=distill.synthetic_fraction,
      synthetic_temperature=distill.synthetic_temperature)
  manager = checkpoint.make_manager(student_dir)
  fresh = initial_student(ctx, student, teacher, tx, rng, teacher_variables)
  state, start = checkpoint.restore_latest(manager, fresh)
  if start:
    print(f"[{label}] resuming at step {start}/{total}", flush=True)
  teacher_inputs = teacher_variables if cached_teacher_logits is None else cached_teacher_logits
  phase = loop.Phase(name=label, total=total, steps_per_epoch=steps_per_epoch,
                     images_per_step=cfg.batch_size,
                     learning_rate=train.learning_rate_schedule(optimizer_cfg, total, steps_per_epoch),
                     hint="config.student.optimizer.learning_rate",
                     evaluate=_periodic_evaluation(ctx, student, teacher, teacher_variables),
                     evaluate_every=ctx.config.evaluation.every_steps)
  step = functools.partial(step_fn, teacher_inputs=teacher_inputs, data=ctx.distill_data,
                           ood_images=ctx.ood_images,
                           generator_variables=ctx.synthetic[1] if ctx.synthetic else None)
  state = _fit(ctx, step, state, phase, manager, start)
  return train.model_variables(state)


def _periodic_evaluation(ctx: Context, student, teacher, teacher_variables):
  """state -> the student's clean test metrics (accuracy, NLL, ECE, agreement, KL), for
  config.evaluation.every_steps; None when that is 0."""
  if not ctx.config.evaluation.every_steps:
    return None
  data = ctx.distill_data
  evaluator = evaluation.Evaluator(
      teacher, student, mesh=ctx.mesh, compute_dtype=ctx.compute_dtype,
      method=ctx.config.ensemble_method,
      batch_size=evaluation.eval_batch_size(
          ctx.config.eval_batch_size,
          min(data.test_images.shape[0], data.train_images.shape[0]), ctx.mesh))

  teacher_test_logits = []  # the teachers' test logits, computed at the first evaluation only

  def evaluate(state):
    if not teacher_test_logits:
      teacher_test_logits.append(evaluator.teacher_logits(teacher_variables, data.test_images,
                                                          data.mean, data.std))
    student_logits = evaluator.student_logits(train.model_variables(state), data.test_images,
                                              data.mean, data.std)
    values = evaluation.split_metrics(teacher_test_logits[0], student_logits,
                                      data.test_labels)["student"]
    return {f"test_{k}": v for k, v in values.items()}

  return evaluate


def _fit(ctx: Context, step, state, phase: loop.Phase, manager, start: int):
  """fit_phase in the run of `ctx`."""
  return fit_phase(ctx.config, ctx.workdir, ctx.log, step, state, phase, manager, start, ctx.plan)


def fit_phase(config, workdir: str, log, step, state, phase: loop.Phase, manager, start: int,
              plan=None):
  """loop.fit with the run's logging, checkpoint and profiling settings; a divergence leaves
  diverged.json in the workdir; closes the phase's manager."""
  phase.profile_dir = os.path.join(workdir, "profile", tensorboard.phase_tag(phase.name))
  try:
    return loop.fit(step, state, phase=phase, manager=manager, start=start, log=log,
                    log_every=config.log_every_steps,
                    checkpoint_every=config.checkpoint_every_steps,
                    profile_steps=config.profile_steps, study=plan)
  except DivergedError as e:
    workdir_lib.write_diverged(workdir, str(e))
    raise
  finally:
    manager.close()


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
  only when the distillation images never change (no augmentation, no per-step OOD draws)."""
  policy = config.distill.augment or config.data.augment
  per_step_ood = bool(config.distill.ood_data.source) and config.distill.ood_mode == "replace"
  return (config.distill.cache_teacher_logits and not augment_lib.parse_policy(policy)
          and not per_step_ood and not config.distill.synthetic_workdir)


def real_batch_size(config) -> int:
  """The student's training images per step: its batch size less the synthetic images, if any."""
  return config.student.batch_size - train.synthetic_count(config.distill.synthetic_fraction,
                                                           config.student.batch_size)


def distillation_targets(ctx: Context, evaluator, teacher_variables, label: str = "teachers"):
  """(member logits (m, N, C), ensemble logits (N, C)) on the distillation set, or (None, None)."""
  if not caches_teacher_logits(ctx.config):
    return None, None
  data = ctx.distill_data
  member_logits = evaluator.teacher_logits(teacher_variables, data.train_images, data.mean, data.std,
                                           label=f"{label} on the distillation set")
  ensemble_logits = jax.jit(losses.ensemble_log_probs,
                            out_shardings=parallel.replicated_sharding(ctx.mesh))(member_logits)
  return member_logits, ensemble_logits


def evaluate(ctx: Context, evaluator, teacher_variables, student_variables, *, labelled: int,
             train_member_logits=None) -> tuple:
  """Clean test and train metrics, plus augmented-stream fidelity and stage CKA when configured.

  Returns (results, the members' test logits). "train" is the student's distillation set without
  appended out-of-distribution images: its first `labelled` images (under data recycling it differs
  from the teachers' set);
  `train_member_logits`, the members' logits on the distillation set when distillation cached them,
  spare recomputing them.
  """
  config, data = ctx.config, ctx.distill_data
  results = {"teachers": [{} for _ in range(config.teacher.ensemble_size)], "ensemble": {},
             "student": {}}
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
    split_results = evaluation.split_metrics(member_logits, student_logits, labels)
    if split == "test":
      test_member_logits = member_logits
    evaluation.add_split(results, split, split_results)
  if config.evaluation.augmented_batches:
    augmented = evaluator.augmented_fidelity(
        teacher_variables, student_variables, data, distillation_policy(config),
        _seed_key(config, _EVALUATION), config.evaluation.augmented_batches)
    results["student"].update({f"augmented_{k}": v for k, v in augmented.items()})
  if config.evaluation.cka_examples:
    images = data.test_images[:config.evaluation.cka_examples]
    results["student"].update(
        evaluator.stage_cka(teacher_variables, student_variables, images, data.mean, data.std))
  return results, test_member_logits


def independent_baseline(ctx: Context, evaluator, teacher, student, test_member_logits) -> dict:
  """A second student, distilled the same way from an independently trained ensemble; its agreement
  with the FIRST ensemble (whose test logits are `test_member_logits`) is what the real student's
  agreement should be read against."""
  config, data = ctx.config, ctx.distill_data
  directory = os.path.join(ctx.workdir, "independent")
  teachers_dir = os.path.join(directory, "teachers")
  independent_teachers = trained_teachers(ctx, teacher, teachers_dir,
                                         _seed_key(config, _INDEPENDENT_TEACHERS),
                                         label="independent teachers")
  _, targets = distillation_targets(ctx, evaluator, independent_teachers,
                                    label="independent teachers")
  independent_student = distill_student(
      ctx, student, teacher, independent_teachers, os.path.join(directory, "student"),
      _seed_key(config, _INDEPENDENT_STUDENT), cached_teacher_logits=targets,
      label="independent student")
  student_logits = evaluator.student_logits(independent_student, data.test_images, data.mean,
                                            data.std, label="independent student on test")
  values = evaluation.split_metrics(test_member_logits, student_logits, data.test_labels)["student"]
  return {f"independent_test_{k}": v for k, v in values.items()}


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


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole study of `config` in `workdir` and returns its results."""
  if config.study == "gan":  # an SN-GAN, whose generator later gives synthetic distillation data
    from kd_jax import gan  # pylint: disable=g-import-not-at-top
    return gan.run(config, workdir)
  config_lib.validate(config)
  if stream_lib.uses_streaming(config.data):  # data larger than memory: kd_jax/streamed.py
    from kd_jax import streamed  # pylint: disable=g-import-not-at-top (it imports this module)
    return streamed.run(config, workdir)
  # Everything that can fail on the user's input happens before the workdir is touched.
  teacher_policy(config)
  distillation_policy(config)
  dataset = load_dataset(config.data)
  ood = (load_dataset(config.distill.ood_data, key="distill.ood_data")
         if config.distill.ood_data.source else None)
  image_shape = tuple(dataset.train_images.shape[1:])
  if ood is not None and tuple(ood.train_images.shape[1:]) != image_shape:
    raise KdJaxError(f"config.distill.ood_data images have shape {ood.train_images.shape[1:]}, the "
                     f"training images {image_shape}; choose an OOD dataset of the same image size.")
  synthetic = None
  if config.distill.synthetic_workdir:
    from kd_jax import gan  # pylint: disable=g-import-not-at-top
    sampler, generator_variables = gan.load_generator(config.distill.synthetic_workdir, image_shape)
    synthetic = (sampler(config.distill.synthetic_batch_norm), generator_variables)
  appended_ood = None
  if ood is not None and config.distill.ood_mode == "append":
    appended_ood = appended_ood_images(ood, config.distill.ood_examples, config.data.split_seed)
  compute_dtype = jnp.bfloat16 if config.precision == "bf16" else jnp.float32
  num_tokens = getattr(dataset, "num_tokens", 0)  # text: the embeddings' rows (kd_jax/data/text.py)
  teacher = build_model(config.teacher.model, dataset.num_classes, compute_dtype, num_tokens)
  student = build_model(config.student.model, dataset.num_classes, compute_dtype, num_tokens)
  mesh = parallel.make_mesh()
  teacher_variables = None
  if config.teacher.load_from:
    teacher_variables = load_teachers(teacher, config.teacher.load_from,
                                      config.teacher.ensemble_size, image_shape, mesh)
  num_train = dataset.train_images.shape[0]
  teacher_split = split_indices(num_train, config.teacher.data_split, config.data.split_seed,
                                config.teacher.train_examples)
  distill_split = split_indices(num_train, config.distill.data_split, config.data.split_seed)
  distill_examples = distill_split.size + (0 if appended_ood is None else len(appended_ood))
  test_size = config.evaluation.test_size
  test_examples = test_size or int(dataset.test_images.shape[0])
  check_sizes(config, teacher_split.size, distill_examples, test_examples, mesh)
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)

  statistics = channel_statistics(dataset.train_images)
  teacher_data = device_data(dataset, teacher_split, mesh, statistics, test_size=test_size)
  same_data = np.array_equal(teacher_split, distill_split) and appended_ood is None
  ctx = Context(
      config=config, workdir=workdir, mesh=mesh, teacher_data=teacher_data,
      distill_data=teacher_data if same_data else device_data(
          dataset, distill_split, mesh, statistics, test_size=test_size, extra_images=appended_ood),
      ood_images=(parallel.replicate(ood.train_images, mesh)
                  if ood is not None and config.distill.ood_mode == "replace" else None),
      image_shape=image_shape, compute_dtype=compute_dtype, log=workdir_lib.MetricsLog(workdir),
      plan=study_plan(config, teacher_split.size, distill_examples, distill_split.size,
                      test_examples),
      synthetic=None if synthetic is None else (synthetic[0],
                                                parallel.replicate(synthetic[1], mesh)))
  print(f"kd_jax: {dataset.name} ({num_train} train / {dataset.test_images.shape[0]} test, "
        f"{dataset.num_classes} classes) on {mesh.devices.size} {jax.default_backend()} device(s); "
        f"workdir {workdir}{' (resuming)' if resuming else ''}", flush=True)
  print(ctx.plan.describe(), flush=True)
  ctx.log.write({"event": "resume" if resuming else "start", "devices": int(mesh.devices.size),
                 "backend": jax.default_backend()})

  if teacher_variables is None:
    teachers_dir = os.path.join(workdir, "teachers")
    teacher_variables = trained_teachers(ctx, teacher, teachers_dir, _seed_key(config, _TEACHERS))
  evaluator = evaluation.Evaluator(
      teacher, student, mesh=mesh, compute_dtype=compute_dtype, method=config.ensemble_method,
      batch_size=evaluation.eval_batch_size(
          config.eval_batch_size,
          min(int(ctx.distill_data.test_images.shape[0]), int(distill_split.size)), mesh))
  train_member_logits, targets = distillation_targets(ctx, evaluator, teacher_variables)
  student_variables = distill_student(ctx, student, teacher, teacher_variables,
                                      os.path.join(workdir, "student"), _seed_key(config, _STUDENT),
                                      cached_teacher_logits=targets)
  # The first distill_split.size images of the distillation set are labelled; appended OOD ones follow.
  results, test_member_logits = evaluate(ctx, evaluator, teacher_variables, student_variables,
                                         labelled=int(distill_split.size),
                                         train_member_logits=train_member_logits)
  if config.evaluation.independent_student:
    results["student"].update(
        independent_baseline(ctx, evaluator, teacher, student, test_member_logits))
  ctx.log.write({"phase": "evaluation", **results_lib.flatten_results(results)})
  runtime.raise_if_stopped()  # a signal during evaluation: no results from an interrupted run
  workdir_lib.write_results(workdir, results)
  workdir_lib.release(workdir)  # (a run that fails keeps its lock until the process ends)
  print(results_lib.results_table(results), flush=True)
  return results
