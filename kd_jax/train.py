"""Train state, optimizers and the compiled steps: supervised (teachers) and distillation (student).

A step is a pure function of (state, on-device dataset): it derives its batch indices and augmentation
from the state's RNG and step counter, so nothing crosses from host to device per step and a run resumed
from a checkpoint replays exactly the batches the uninterrupted run would have drawn.
"""

import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from kd_jax import ensemble, losses, metrics, parallel
from kd_jax.data import augment as augment_lib
from kd_jax.data import order

# fold_in tags that separate the RNG streams derived from one state key.
_ORDER_STREAM, _STEP_STREAM = 0, 1

# XLA:CPU flags that made our steps faster, per jaxlib version they were measured with (an XLA flag that
# a later version no longer knows is a fatal error at startup, so other versions get none). 0.10.2:
# XLA's own (Eigen) convolutions instead of YNNPACK's: the PreResNet-20 distillation step ran about 25%
# faster on a 2-core Xeon; see docs/performance.md. GPU and TPU backends ignore xla_cpu_* flags.
CPU_XLA_FLAGS = {
    "0.10.2": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",),
}


def add_cpu_xla_flags(environ=None) -> tuple:
  """Appends this jaxlib's CPU_XLA_FLAGS to XLA_FLAGS; returns the flags it added.

  A flag whose name XLA_FLAGS already mentions is left as the user set it, and KD_JAX_CPU_XLA_FLAGS=0
  turns the defaults off. XLA reads XLA_FLAGS once, when the first backend starts, so this only acts
  if it runs before any JAX computation: it runs when this module is imported.
  """
  environ = os.environ if environ is None else environ
  if environ.get("KD_JAX_CPU_XLA_FLAGS", "1") == "0":
    return ()
  current = environ.get("XLA_FLAGS", "")
  added = tuple(flag for flag in CPU_XLA_FLAGS.get(jax.lib.__version__, ())
                if flag.split("=", 1)[0] not in current)
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


add_cpu_xla_flags()


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any
  rng: jax.Array  # raw uint32 key; data order and augmentation derive from it and `step`


@flax.struct.dataclass
class DeviceData:
  """A whole small dataset, replicated on every device, as uint8 images and int32 labels."""
  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  mean: jax.Array  # per-channel, of the training images scaled to [0, 1]
  std: jax.Array


def model_variables(state: TrainState) -> dict:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def learning_rate_schedule(cfg, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Cosine from cfg.learning_rate to cfg.final_learning_rate, after an optional linear warm-up."""
  warmup_steps = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
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


def create_state(model, tx, rng, image_shape) -> TrainState:
  """Initializes a model and its optimizer from `rng` (init and training keys are split from it)."""
  init_rng, train_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=train_rng)


def sample_batch(rng, step, images, labels, batch_size: int):
  """The step's batch of a fresh random order per epoch; O(batch_size) work, whatever the dataset size.

  With N examples and S = N // batch_size steps per epoch, step t is batch t % S of epoch e = t // S:
  positions [(t % S) * batch_size, (t % S + 1) * batch_size) of the epoch's order, a keyed bijection
  of [0, N) (`kd_jax.data.order.permute`, keyed by rng and e). So every epoch draws S * batch_size
  distinct examples, and the N % batch_size it leaves out (those at the order's last positions) are
  different each epoch. The batch depends only on (rng, step), which is what makes resume exact.
  """
  num_examples = images.shape[0]
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{num_examples} training examples are fewer than the batch size {batch_size}")
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  epoch_key = jax.random.fold_in(jax.random.fold_in(rng, _ORDER_STREAM), epoch)
  indices = order.permute(epoch_key, position * batch_size + jnp.arange(batch_size), num_examples)
  return images[indices], labels[indices]


def step_key(state: TrainState):
  return jax.random.fold_in(jax.random.fold_in(state.rng, _STEP_STREAM), state.step)


def _apply_gradients(state: TrainState, tx, grads, batch_stats) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)


def _training_forward(model, state: TrainState, params, x):
  """Train-mode forward that also returns the updated BatchNorm statistics (if any)."""
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=True), state.batch_stats


def make_supervised_step(model, tx, *, batch_size: int, augment: Callable, mesh,
                         compute_dtype=jnp.float32, method: str = "auto"):
  """Compiled cross-entropy step for a stack of k independently seeded models (teachers).

  Each member draws its own batches and augmentations from its own key, exactly as if trained alone;
  stacking them only amortizes dispatch and compilation across members.
  """

  def member_step(state: TrainState, data: DeviceData):
    images, labels = sample_batch(state.rng, state.step, data.train_images, data.train_labels,
                                  batch_size)
    x = augment_lib.normalize(augment(step_key(state), images), data.mean, data.std, compute_dtype)
    x = parallel.shard_batch(x, mesh)

    def loss_fn(params):
      logits, batch_stats = _training_forward(model, state, params, x)
      return losses.cross_entropy(logits, labels), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = _apply_gradients(state, tx, grads, batch_stats)
    return new_state, {"loss": loss, "accuracy": metrics.accuracy(logits, labels)}

  def step(stacked_state, data):
    return ensemble.map_members(lambda s: member_step(s, data), stacked_state, method=method)

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def teacher_logits_fn(teacher, method: str):
  """(stacked teacher variables, x) -> ensemble logits log(mean_i softmax(z_i)), eval-mode BatchNorm."""

  def ensemble_logits(stacked_variables, x):
    member_logits = ensemble.map_members(lambda v: teacher.apply(v, x, train=False),
                                         stacked_variables, method=method)
    return losses.ensemble_log_probs(member_logits)

  return ensemble_logits


def make_distill_step(student, teacher, tx, *, batch_size: int, augment: Callable, mesh,
                      temperature: float, alpha: float, loss_kind: str = "forward_kl",
                      ood_fraction: float = 0.0, compute_dtype=jnp.float32, method: str = "auto"):
  """Compiled distillation step: teacher-ensemble forward + student forward/backward + update, fused.

  The teachers see the same augmented batch as the student and receive no gradient. With
  ood_fraction > 0, that fraction of each batch is replaced by random images of `ood_images` (labelled
  only by the teacher; their label is -1 and they are left out of the logged accuracy).
  """
  ensemble_logits = teacher_logits_fn(teacher, method)
  num_ood = int(round(ood_fraction * batch_size))

  def step(state: TrainState, teacher_variables, data: DeviceData, ood_images=None):
    images, labels = sample_batch(state.rng, state.step, data.train_images, data.train_labels,
                                  batch_size)
    augment_key, loss_key, ood_key = jax.random.split(step_key(state), 3)
    if num_ood:
      picked = jax.random.randint(ood_key, (num_ood,), 0, ood_images.shape[0])
      images = jnp.concatenate([images[:batch_size - num_ood], ood_images[picked]])
      labels = jnp.concatenate([labels[:batch_size - num_ood], jnp.full((num_ood,), -1, jnp.int32)])
    x = augment_lib.normalize(augment(augment_key, images), data.mean, data.std, compute_dtype)
    x = parallel.shard_batch(x, mesh)
    teacher_logits = jax.lax.stop_gradient(ensemble_logits(teacher_variables, x))

    def loss_fn(params):
      logits, batch_stats = _training_forward(student, state, params, x)
      loss = losses.distillation_loss(logits, teacher_logits, labels, alpha=alpha,
                                      temperature=temperature, kind=loss_kind, rng=loss_key)
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = _apply_gradients(state, tx, grads, batch_stats)
    in_distribution = batch_size - num_ood
    step_metrics = {"loss": loss,
                    "accuracy": metrics.accuracy(logits[:in_distribution], labels[:in_distribution]),
                    **metrics.fidelity_metrics(teacher_logits, logits)}
    return new_state, step_metrics

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def make_predict_fn(apply_fn: Callable, *, batch_size: int, mesh, compute_dtype=jnp.float32):
  """Returns predict(variables, images, mean, std) -> logits for every image (clean, eval mode).

  `apply_fn(variables, x)` gives (..., B, C) logits for a normalized batch; the images stay on device
  and are cut into fixed-size chunks inside one compiled function (the last chunk overlaps the one
  before it instead of being padded, so there is a single compilation).
  """

  @jax.jit
  def predict_chunk(variables, images, start, mean, std):
    x = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
    x = parallel.shard_batch(augment_lib.normalize(x, mean, std, compute_dtype), mesh)
    return apply_fn(variables, x).astype(jnp.float32)

  def predict(variables, images, mean, std):
    num_images = images.shape[0]
    if num_images < batch_size:
      raise ValueError(f"{num_images} images are fewer than the evaluation batch size {batch_size}")
    chunks = []
    for start in range(0, num_images, batch_size):
      clamped = min(start, num_images - batch_size)
      logits = predict_chunk(variables, images, clamped, mean, std)
      chunks.append(logits[..., start - clamped:, :])
    return jnp.concatenate(chunks, axis=-2)

  return predict
