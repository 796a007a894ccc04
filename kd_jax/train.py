"""Train state, optimizers and the compiled steps: supervised (teachers) and distillation (student).

A step is a pure function of (state, on-device dataset): it derives its batch indices and augmentation
from the state's RNG and step counter, so nothing crosses from host to device per step and a run resumed
from a checkpoint replays exactly the batches the uninterrupted run would have drawn.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from kd_jax import distill, ensemble, losses, methods, metrics, parallel
from kd_jax.data import augment as augment_lib
from kd_jax.data import order
from kd_jax.data.placement import DeviceData

# fold_in tags that separate the RNG streams derived from one state key.
_ORDER_STREAM, _STEP_STREAM, _DROPOUT_STREAM = 0, 1, 2
# fold_in tag under a distillation step's key for its synthetic images' z.
_SYNTHETIC_STREAM = 3

@flax.struct.dataclass
class TrainState:
  """A model's training state; a distillation method's own parameters and state ride along.

  method_params: the distillation method's trainable parameters (connectors, regressors,
  embeddings; kd_jax/methods/), updated by the student's optimizer with their own optimizer state
  method_opt_state; method_state: its non-trainable state (CRD's memory bank). All three are {} for
  the teachers, the logit methods and checkpoints written before they existed.
  """
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any
  rng: jax.Array  # raw uint32 key; data order and augmentation derive from it and `step`
  method_params: Any = flax.struct.field(default_factory=dict)
  method_opt_state: Any = flax.struct.field(default_factory=dict)
  method_state: Any = flax.struct.field(default_factory=dict)


def model_variables(state: TrainState) -> dict:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def decay_boundaries(cfg, steps_per_epoch: int) -> tuple:
  """The step schedule's boundaries: the optimizer count at which each of cfg.decay_epochs starts
  (epoch e, counted from 0, holds counts [e * steps_per_epoch, (e + 1) * steps_per_epoch))."""
  return tuple(int(epoch * steps_per_epoch) for epoch in cfg.decay_epochs)


def step_decay_schedule(learning_rate: float, boundaries, factor: float) -> optax.Schedule:
  """learning_rate * factor^(number of boundaries <= count): the multi-step schedule of the
  CIFAR-100 distillation recipe (PyTorch's MultiStepLR, stepped per epoch)."""
  bounds = jnp.asarray(boundaries, jnp.int32)

  def schedule(count):
    decays = jnp.sum(jnp.asarray(count, jnp.int32) >= bounds)
    return learning_rate * jnp.power(jnp.float32(factor), decays.astype(jnp.float32))

  return schedule


def learning_rate_schedule(cfg, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """cfg.schedule after an optional linear warm-up from 0 over cfg.warmup_epochs: 'cosine' from
  cfg.learning_rate to cfg.final_learning_rate over the phase, or 'step', cfg.learning_rate times
  cfg.decay_factor at each of cfg.decay_epochs (counted from the phase's start, warm-up included).

  A schedule is evaluated at the optimizer's count, the number of updates before the step."""
  warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "step":
    decayed = step_decay_schedule(cfg.learning_rate, decay_boundaries(cfg, steps_per_epoch),
                                  cfg.decay_factor)
    if not warmup_steps:
      return decayed
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, warmup_steps)
    return lambda count: jnp.where(count < warmup_steps, warmup(count), decayed(count))
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1),
        end_value=cfg.final_learning_rate)
  return optax.cosine_decay_schedule(
      cfg.learning_rate, max(total_steps, 1), alpha=cfg.final_learning_rate / cfg.learning_rate)


def make_optimizer(cfg, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum / Nesterov) or Adam with PyTorch-style (coupled, L2) weight decay on all parameters.

  The paper's recipes come from PyTorch, whose `weight_decay` adds wd * param to the gradient before
  momentum; optax.add_decayed_weights in front of the optimizer does the same.
  """
  schedule = learning_rate_schedule(cfg, total_steps, steps_per_epoch)
  if cfg.name == "sgd":
    opt = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == "adam":
    opt = optax.adam(schedule)
  else:
    raise ValueError(f"optimizer {cfg.name!r} is not 'sgd' or 'adam'")
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)


def dummy_input(model, image_shape):
  """Zeros shaped like one example for `model.init`: float32 images, or the dtype a model declares
  as its class attribute `input_dtype` (int32 token ids for the text models)."""
  return jnp.zeros((1, *image_shape), getattr(model, "input_dtype", jnp.float32))


def create_state(model, tx, rng, image_shape) -> TrainState:
  """Initializes a model and its optimizer from `rng` (init and training keys are split from it)."""
  init_rng, train_rng = jax.random.split(rng)
  variables = model.init(init_rng, dummy_input(model, image_shape), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=train_rng)


def sample_indices(rng, step, num_examples: int, batch_size: int):
  """The step's example indices, from a fresh random order per epoch; O(batch_size) work.

  With N examples and S = N // batch_size steps per epoch, step t is batch t % S of epoch e = t // S:
  positions [(t % S) * batch_size, (t % S + 1) * batch_size) of the epoch's order, a keyed bijection
  of [0, N) (`kd_jax.data.order.permute`, keyed by rng and e), evaluated at those positions only. So
  every epoch draws S * batch_size distinct examples, and the N % batch_size it leaves out (those at
  the order's last positions) are different each epoch. The indices depend only on (rng, step), which
  is what makes resume exact.
  """
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{num_examples} training examples are fewer than the batch size {batch_size}")
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  epoch_key = jax.random.fold_in(jax.random.fold_in(rng, _ORDER_STREAM), epoch)
  return order.permute(epoch_key, position * batch_size + jnp.arange(batch_size), num_examples)


def sample_batch(rng, step, images, labels, batch_size: int):
  """The step's (images, labels), drawn by `sample_indices`."""
  indices = sample_indices(rng, step, images.shape[0], batch_size)
  return images[indices], labels[indices]


def step_key(state: TrainState):
  return jax.random.fold_in(jax.random.fold_in(state.rng, _STEP_STREAM), state.step)


def _apply_gradients(state: TrainState, tx, grads, batch_stats):
  """The updated state, and the global L2 norms of gradient, update and new parameters.

  The norms are step metrics to watch training by, and the training loop's divergence check: a NaN or
  Inf anywhere in the parameters makes param_norm non-finite (as does a norm beyond float32's range,
  which is divergence too).
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  norms = {"grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
           "param_norm": optax.tree.norm(params)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), norms


def _apply_method_gradients(state: TrainState, tx, grads, method_state):
  """The state with the method's parameters updated by the student's optimizer (from their own
  optimizer state) and its new non-trainable state; the norms of the method's gradient and new
  parameters."""
  updates, opt_state = tx.update(grads, state.method_opt_state, state.method_params)
  params = optax.apply_updates(state.method_params, updates)
  norms = {"method_grad_norm": optax.tree.norm(grads), "method_param_norm": optax.tree.norm(params)}
  return state.replace(method_params=params, method_opt_state=opt_state,
                       method_state=method_state), norms


def _training_forward(model, state: TrainState, params, x, **features):
  """Train-mode forward that also returns the updated BatchNorm statistics (if any).

  Dropout (VGG-16's original head) draws its masks from a key of its own stream of (state.rng,
  state.step), so a resumed run drops the same units; models without dropout ignore it.
  `features=True` (CIFAR-zoo models) returns (logits, StageFeatures) in place of the logits.
  """
  variables = {"params": params}
  dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, _DROPOUT_STREAM), state.step)
  rngs = {"dropout": dropout_key}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs,
                                  **features)
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=True, rngs=rngs, **features), state.batch_stats


def make_supervised_step(model, tx, *, batch_size: int, augment: Callable, mesh,
                         compute_dtype=jnp.float32, method: str = "auto", streamed: bool = False):
  """Compiled cross-entropy step for a stack of k independently seeded models (teachers).

  Each member draws its own batches and augmentations from its own key, exactly as if trained alone;
  stacking them only amortizes dispatch and compilation across members.

  step(stacked_state, data) draws each member's batch from the on-device `data`. With streamed=True
  the step is step(stacked_state, images, labels, mean, std) instead: each member's batch arrives from
  the host (kd_jax/study/streamed.py), stacked as (k, B, H, W, C) uint8 and (k, B) labels, and goes through
  the same update (on-device augmentation, normalization, forward, backward).
  """

  def member_step(state: TrainState, data: DeviceData):
    images, labels = sample_batch(state.rng, state.step, data.train_images, data.train_labels,
                                  batch_size)
    return member_update(state, images, labels, data.mean, data.std)

  def member_update(state: TrainState, images, labels, mean, std):
    x = augment_lib.normalize(augment(step_key(state), images), mean, std, compute_dtype)
    x = parallel.shard_batch(x, mesh)

    def loss_fn(params):
      logits, batch_stats = _training_forward(model, state, params, x)
      return losses.cross_entropy(logits, labels), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, norms = _apply_gradients(state, tx, grads, batch_stats)
    return new_state, {"loss": loss, "accuracy": metrics.accuracy(logits, labels), **norms}

  def step(stacked_state, data):
    return ensemble.map_members(lambda s: member_step(s, data), stacked_state, method=method)

  def streamed_step(stacked_state, images, labels, mean, std):
    return ensemble.map_members(lambda s, x, y: member_update(s, x, y, mean, std),
                                stacked_state, images, labels, method=method)

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(streamed_step if streamed else step, donate_argnums=0,
                 out_shardings=(replicated, replicated))


def teacher_logits_fn(teacher, method: str):
  """(stacked teacher variables, x) -> ensemble logits log(mean_i softmax(z_i)), eval-mode BatchNorm."""

  def ensemble_logits(stacked_variables, x):
    member_logits = ensemble.member_logits(teacher, stacked_variables, x, method)
    return losses.ensemble_log_probs(member_logits)

  return ensemble_logits


def teacher_features_fn(teacher):
  """(stacked teacher variables of one member, x) -> (its logits as an ensemble of one, the
  MethodInputs feature fields of it: kd_jax.methods.network_features), eval-mode BatchNorm."""

  def run(stacked_variables, x):
    variables = jax.tree.map(lambda v: v[0], stacked_variables)
    logits, features = teacher.apply(variables, x, train=False, features=True)
    return losses.ensemble_log_probs(logits[None]), methods.network_features(features)

  return run


def method_inputs(student_logits, student_features, teacher_logits, teacher_features, labels, step,
                  example_indices=None) -> methods.MethodInputs:
  """MethodInputs of a step; the features are network_features dicts, or None (logit methods)."""
  features = {}
  for role, values in (("student", student_features), ("teacher", teacher_features)):
    if values is not None:
      features.update({f"{role}_{key}": value for key, value in values.items()})
  return methods.MethodInputs(student_logits=student_logits, teacher_logits=teacher_logits,
                              labels=labels, step=step, example_indices=example_indices,
                              **features)


def make_distill_step(student, teacher, tx, spec: distill.DistillSpec, mesh):
  """Compiled distillation step: teacher-ensemble forward + student forward/backward + update, fused,
  as `spec` (kd_jax/distill.py) describes.

  step(state, teacher_inputs, data, ood_images, generator_variables) -> (state, metrics).
  `teacher_inputs` is the stacked teacher variables, whose ensemble runs inside the step on the same
  augmented batch as the student and receives no gradient; or, with spec.teachers == CACHED_LOGITS,
  an (N, C) table of the ensemble's logits on `data.train_images`, from which the step gathers its
  batch's rows. `ood_images` (spec.extra an OodReplacement: the batch's last rows are random images of
  it, label -1, left out of the logged accuracy) and `generator_variables` (spec.extra SyntheticImages:
  the generator's samples follow the real rows; no gradient reaches the generator) are None otherwise.

  A feature method (spec.method.uses_features) gets both networks' stage features (the teacher an
  ensemble of one) and the batch's example indices in its MethodInputs; the gradient reaches the
  student's parameters and the method's (state.method_params, updated by `tx` from
  state.method_opt_state), and the method's new state becomes state.method_state, in the same
  compiled program.

  The logged `loss` is the objective minus its value for a student that equals the teacher (for the
  paper's loss, tau^2 KL(p_t^tau || p_s^tau) instead of the cross-entropy): 0 at a perfect match, with
  the same gradient, since the subtracted term does not depend on the student. A feature method's
  student has no such match (its features are not the teacher's): its loss is logged as it is.

  With spec.streamed the step is step(state, teacher_variables, images, labels, mean, std): the batch
  arrives from the host (kd_jax/study/streamed.py; uint8 images, int32 labels) instead of being drawn
  from on-device data, and goes through the same update (without example indices).

  The step's two halves (`step` draws the batch, `update` is the rest) are closures over `spec`, so
  the whole compiled program reads in one place; hence the length.
  """
  batch_size, num_ood, num_synthetic = spec.batch_size, spec.num_ood, spec.num_synthetic
  uses_features = spec.method.uses_features
  ensemble_logits = teacher_logits_fn(teacher, spec.ensemble_method)
  teacher_features = teacher_features_fn(teacher)

  def step(state: TrainState, teacher_inputs, data: DeviceData, ood_images=None,
           generator_variables=None):
    indices = sample_indices(state.rng, state.step, data.train_images.shape[0],
                             batch_size - num_synthetic)
    images, labels = data.train_images[indices], data.train_labels[indices]
    ood_key = jax.random.split(step_key(state), 3)[2]  # (augment, loss, ood): see `update`
    if num_ood:
      picked = jax.random.randint(ood_key, (num_ood,), 0, ood_images.shape[0])
      images = jnp.concatenate([images[:batch_size - num_ood], ood_images[picked]])
      labels = jnp.concatenate([labels[:batch_size - num_ood], jnp.full((num_ood,), -1, jnp.int32)])
    if spec.cached:
      teacher_inputs = teacher_inputs[indices]  # the batch's rows of the cached logits
    return update(state, teacher_inputs, images, labels, data.mean, data.std, generator_variables,
                  example_indices=indices)

  def update(state: TrainState, teacher_inputs, images, labels, mean, std,
             generator_variables=None, example_indices=None):
    """The step after its batch is drawn: augment, normalize, synthetic images, teachers, student,
    update."""
    augment_key, loss_key, _ = jax.random.split(step_key(state), 3)
    x = augment_lib.normalize(spec.augment(augment_key, images), mean, std, spec.compute_dtype)
    if num_synthetic:
      synthetic_key = jax.random.fold_in(step_key(state), _SYNTHETIC_STREAM)
      synthetic = spec.extra.sampler(generator_variables, synthetic_key, num_synthetic)
      x = jnp.concatenate([x, augment_lib.normalize(synthetic, mean, std, spec.compute_dtype)])
      labels = jnp.concatenate([labels, jnp.full((num_synthetic,), -1, jnp.int32)])
    x = parallel.shard_batch(x, mesh)
    teacher_feature_maps = None
    if spec.cached:
      teacher_logits = parallel.shard_batch(teacher_inputs, mesh)
    elif uses_features:
      teacher_logits, teacher_feature_maps = teacher_features(teacher_inputs, x)
    else:
      teacher_logits = ensemble_logits(teacher_inputs, x)

    def objective(student_logits, student_features=None, method_params=None):
      """(the method's loss, (its new state, its metrics)) on this batch."""
      if num_synthetic:
        return distill.mixed_objective(spec.method, student_logits, teacher_logits, labels, loss_key,
                                       spec.extra), (state.method_state, {})
      inputs = method_inputs(student_logits, student_features, teacher_logits,
                             teacher_feature_maps, labels, state.step, example_indices)
      loss, method_state, method_metrics = spec.method.loss(method_params, state.method_state,
                                                            inputs, loss_key)
      return loss, (method_state, method_metrics)

    def loss_fn(params, method_params):
      outputs, batch_stats = _training_forward(student, state, params, x,
                                               **({"features": True} if uses_features else {}))
      logits, features = outputs if uses_features else (outputs, None)
      student_features = None if features is None else methods.network_features(features)
      loss, method_outputs = objective(logits, student_features, method_params)
      return loss, (logits, batch_stats, method_outputs)

    (loss, (logits, batch_stats, (method_state, method_metrics))), (grads, method_grads) = (
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(state.params,
                                                                  state.method_params))
    new_state, norms = _apply_gradients(state, tx, grads, batch_stats)
    if uses_features:
      new_state, method_norms = _apply_method_gradients(new_state, tx, method_grads, method_state)
      norms.update(method_norms)
    # Out-of-distribution images (label -1, replaced or appended) have no accuracy.
    labelled = labels >= 0
    correct = (jnp.argmax(logits, axis=-1) == labels) & labelled
    matched = 0.0 if uses_features else objective(teacher_logits, method_params={})[0]
    step_metrics = {"loss": loss - matched,
                    **{f"method_{k}": v for k, v in method_metrics.items()},
                    "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(labelled), 1),
                    **metrics.fidelity_metrics(teacher_logits, logits), **norms}
    return new_state, step_metrics

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(update if spec.streamed else step, donate_argnums=0,
                 out_shardings=(replicated, replicated))
