"""The student: its starting state, its optimizer, the distillation step's description, and
distillation itself over any batch source (study/memory.py's on-device draw, study/streamed.py's
host feed).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import checkpoint, distill, evaluation, loop, methods, metrics_log, parallel, train
from kd_jax.data import augment as augment_lib
from kd_jax.models import cifar_zoo
from kd_jax.study import phases, teachers as teachers_lib

# fold_in tags under the student's key: the BatchNorm re-estimation pass of an interpolated student,
# and the initialization of a distillation method's own parameters and state.
BATCH_STATS_STREAM = 1
METHOD_STREAM = 2
# The original code's floor for the learning rate of a student interpolated towards its teacher.
INTERPOLATED_LR_FLOOR = 1e-6


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


def distill_method(config, steps_per_epoch: int, num_examples: int = 1):
  """The method the distillation step minimizes: the paper's objective (config.distill.method
  'paper': temperature, alpha, loss) or a benchmark method of kd_jax/methods/ with its reference
  defaults and config.distill.method_options; a warm-up counts epochs of `steps_per_epoch` steps,
  and CRD's memory bank holds `num_examples` rows (the distillation set's size). Bad options are
  one-line errors."""
  cfg = config.distill
  if cfg.method == "paper":
    return distill.LogitKD(temperature=cfg.temperature, alpha=cfg.alpha, kind=cfg.loss)
  options = {"name": cfg.method, **cfg.method_options.to_dict()}
  fields = {field.name for field in dataclasses.fields(methods.METHOD_CLASSES[cfg.method])}
  run_options = {"steps_per_epoch": steps_per_epoch, "num_examples": num_examples}
  options.update((key, value) for key, value in run_options.items() if key in fields)
  return methods.make_method(options)


def distill_spec(ctx: phases.Context, *, cached: bool, streamed: bool, steps_per_epoch: int = 1,
                 num_examples: int = 1) -> distill.DistillSpec:
  """The distillation step's description (kd_jax/distill.py), made once from the run's config."""
  config, cfg = ctx.config, ctx.config.distill
  batch_size = config.student.batch_size
  extra = None
  if cfg.ood_mode == "replace" and cfg.ood_ratio > 0:
    extra = distill.OodReplacement(int(round(cfg.ood_ratio * batch_size)))
  elif cfg.synthetic_fraction > 0:
    extra = distill.SyntheticImages(ctx.synthetic[0],
                                    distill.synthetic_count(cfg.synthetic_fraction, batch_size),
                                    cfg.synthetic_temperature)
  return distill.DistillSpec(
      batch_size=batch_size, augment=phases.distillation_policy(config),
      method=distill_method(config, steps_per_epoch, num_examples),
      teachers=distill.CACHED_LOGITS if cached else distill.TEACHERS_IN_STEP, extra=extra,
      streamed=streamed, compute_dtype=ctx.compute_dtype, ensemble_method=config.ensemble_method)


def initial_method(ctx: phases.Context, spec: distill.DistillSpec, student, teacher,
                   student_state: train.TrainState, teacher_variables, rng, example_labels=None):
  """(params, state) of a feature method ({}, {} for the others), replicated on the mesh: shaped
  by jax.eval_shape of both networks' feature forward on a batch like the step's, initialized from
  `rng`. OFD also reads the teacher's BatchNorm before each stage's ReLU
  (cifar_zoo.bn_before_relu), CRD the distillation set's labels (`example_labels`)."""
  method = spec.method
  if not method.uses_features:
    return {}, {}
  methods.check_ensemble(method, jax.tree.leaves(teacher_variables)[0].shape[0])
  teacher_forward = train.teacher_features_fn(teacher)

  def example_inputs(student_variables, teacher_variables, x):
    logits, features = student.apply(student_variables, x, train=False, features=True)
    teacher_logits, teacher_features = teacher_forward(teacher_variables, x)
    rows = jnp.zeros(x.shape[:1], jnp.int32)
    return train.method_inputs(logits, methods.network_features(features), teacher_logits,
                               teacher_features, rows, jnp.zeros((), jnp.int32), rows)

  x = jax.ShapeDtypeStruct((spec.batch_size, *ctx.image_shape), ctx.compute_dtype)
  shapes = jax.eval_shape(example_inputs, train.model_variables(student_state), teacher_variables, x)
  inputs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  extra = {}
  if method.name == "ofd":
    first = jax.tree.map(lambda v: np.asarray(v[0]), teacher_variables["params"])
    means, stds = cifar_zoo.bn_before_relu(ctx.config.teacher.model.name, first)
    extra = {"teacher_bn_mean": means, "teacher_bn_std": stds}
  elif method.name == "crd":
    extra = {"example_labels": np.asarray(example_labels)}
  params, state = method.init(rng, inputs, **extra)
  return parallel.replicate((params, state), ctx.mesh)


def reestimate_batch_stats(ctx: phases.Context, model, state: train.TrainState,
                           rng) -> train.TrainState:
  """Recomputes BatchNorm running statistics with one train-mode pass over the teachers' training data.

  The original code does this for a student initialized from teacher weights: mixing two networks'
  weights also mixes what their layers output, so neither network's statistics fit the mixture. The
  pass uses the teachers' augmentation policy and the student's batch size, updates only the statistics
  (momentum as in training), and leaves the weights unchanged.
  """
  if not state.batch_stats:
    return state
  data, batch_size = ctx.teacher_data, ctx.config.student.batch_size
  policy = phases.teacher_policy(ctx.config)

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


def initial_student(ctx: phases.Context, student, teacher, tx, rng, teacher_variables):
  """The student's starting state: random, or interpolated towards / set to the teacher's weights."""
  config = ctx.config
  state = phases.model_state_init(student, tx, ctx)(rng)
  if config.student.init == "random":
    return state
  if config.student.init == "teacher_initial":
    # Member 0's initialization, regenerated from its key: the weights before any teacher training.
    first = teachers_lib.initial_members(ctx, teacher, [0],
                                         phases.seed_key(config, phases.TEACHERS),
                                         ctx.teacher_data.train_images.shape[0])
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
    state = reestimate_batch_stats(ctx, student, state, jax.random.fold_in(rng, BATCH_STATS_STREAM))
  return state


def with_method(ctx: phases.Context, spec, student, teacher, state, teacher_variables, tx, rng,
                example_labels):
  """`state` with the distillation method's parameters, their optimizer state (`tx`) and the
  method's state from `initial_method`; unchanged for a method that reads logits only."""
  if not spec.method.uses_features:
    return state
  params, method_state = initial_method(ctx, spec, student, teacher, state, teacher_variables, rng,
                                        example_labels)
  # Replicated like the rest of the state: a single-device optimizer state would give the step a
  # different input signature from its own replicated output and compile it a second time.
  return state.replace(method_params=params,
                       method_opt_state=parallel.replicate(tx.init(params), ctx.mesh),
                       method_state=method_state)


def periodic_evaluation(ctx: phases.Context, student, teacher, teacher_variables):
  """state -> the student's clean test metrics (accuracy, NLL, ECE, agreement, KL), for
  config.evaluation.every_steps (in memory); None when that is 0."""
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


def best_evaluation(ctx: phases.Context, num_examples: int, final: dict,
                    label: str = "student") -> dict:
  """The student's best test accuracy over its periodic evaluations (config.evaluation.every_steps),
  with the step and epoch it was reached and the test agreement there (metrics_log.best_evaluation);
  {} when there are none. The evaluations are the ones the phase logged to metrics.jsonl before its
  last step (one per step, also across resumes), and at the last step the run's final evaluation
  `final` (the student's results: its test_* figures), so the best is never below the last.
  `num_examples`: the distillation set's size, which fixes the phase's steps per epoch."""
  config = ctx.config
  if not config.evaluation.every_steps:
    return {}
  total, steps_per_epoch = phases.schedule_length(config.student, num_examples, "student",
                                                  phases.real_batch_size(config))
  records = [r for r in metrics_log.evaluation_records(ctx.log.path, label) if r["step"] < total]
  records.append({"step": total, **{k: v for k, v in final.items() if k.startswith("test_")}})
  return metrics_log.best_evaluation(records, steps_per_epoch)


def start_variables(ctx: phases.Context, student, teacher, teacher_variables, rng):
  """The student's variables before its first step: initial_student's from the same key (so the very
  start the distillation resumes from), for the evaluation's 'at the start' figures. The optimizer
  plays no part in them."""
  return train.model_variables(
      initial_student(ctx, student, teacher, optax.identity(), rng, teacher_variables))


def distill_student(ctx: phases.Context, student, teacher, teacher_variables, student_dir: str, rng,
                    batches, *, cached_teacher_logits=None, label: str = "student"):
  """Distills the student from the stacked `teacher_variables` (or from `cached_teacher_logits`, the
  ensemble's (N, C) logits on the distillation set, when its images are not augmented) on `batches`;
  returns the student's variables."""
  cfg = ctx.config.student
  total, steps_per_epoch = phases.schedule_length(cfg, batches.num_examples, "student",
                                                  phases.real_batch_size(ctx.config))
  optimizer_cfg = student_optimizer_config(ctx.config)
  tx = train.make_optimizer(optimizer_cfg, total, steps_per_epoch)
  spec = distill_spec(ctx, cached=cached_teacher_logits is not None, streamed=batches.streamed,
                      steps_per_epoch=steps_per_epoch, num_examples=batches.num_examples)
  step_fn = train.make_distill_step(student, teacher, tx, spec, ctx.mesh)
  manager = checkpoint.make_manager(student_dir)
  fresh = initial_student(ctx, student, teacher, tx, rng, teacher_variables)
  fresh = with_method(ctx, spec, student, teacher, fresh, teacher_variables, tx,
                      jax.random.fold_in(rng, METHOD_STREAM), batches.example_labels)
  state, start = batches.restore(manager, fresh, label, total)
  phase = loop.Phase(name=label, total=total, steps_per_epoch=steps_per_epoch,
                     images_per_step=cfg.batch_size,
                     learning_rate=train.learning_rate_schedule(optimizer_cfg, total, steps_per_epoch),
                     hint="config.student.optimizer.learning_rate",
                     evaluate=periodic_evaluation(ctx, student, teacher, teacher_variables),
                     evaluate_every=ctx.config.evaluation.every_steps)
  teacher_inputs = teacher_variables if cached_teacher_logits is None else cached_teacher_logits
  step = batches.bind(step_fn, teacher_inputs=teacher_inputs)
  state = phases.fit(ctx, step, state, phase, manager, start, batches)
  return train.model_variables(state)
