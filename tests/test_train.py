"""kd_jax/train.py: dropout in the compiled train steps (masks drawn from (state.rng, step), so resume
is exact), the distillation step's loss and update against NumPy and Eq. 1, cached teacher logits,
the logged update norms, and the batch draw as a pure function of (rng, step)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_device_data, tiny_config
from kd_jax import distill, losses, parallel, train
from kd_jax.data import augment as augment_lib
from kd_jax.data import placement
from kd_jax.models import build_model


class DropoutNet(nn.Module):
  """Dense -> Dropout(0.5) -> Dense: the smallest model that needs a 'dropout' key in training."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


def _state(step, seed=0):
  model = DropoutNet()
  tx = optax.sgd(0.1)
  state = train.create_state(model, tx, jax.random.PRNGKey(seed), (2, 2, 1))
  return model, tx, state.replace(step=jnp.asarray(step, jnp.int32))


def test_training_forward_draws_dropout_from_rng_and_step():
  x = np.random.default_rng(0).normal(size=(4, 2, 2, 1)).astype(np.float32)
  model, _, state = _state(step=3)
  forward = lambda s: np.asarray(train._training_forward(model, s, s.params, x)[0])
  first = forward(state)
  np.testing.assert_array_equal(first, forward(state))  # same (rng, step): same masks
  assert not np.allclose(first, forward(state.replace(step=state.step + 1)))
  assert not np.allclose(first, forward(state.replace(rng=jax.random.PRNGKey(9))))
  eval_logits = model.apply({'params': state.params}, x, train=False)
  assert not np.allclose(first, eval_logits)  # dropout is active in training


def _data():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 2, 2, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, (16,)).astype(np.int32)
  return placement.DeviceData(train_images=images, train_labels=labels, test_images=images,
                          test_labels=labels, mean=np.zeros(1, np.float32),
                          std=np.ones(1, np.float32))


def test_supervised_step_trains_a_dropout_model_reproducibly():
  data = _data()
  model, tx, state = _state(step=0)
  step = train.make_supervised_step(model, tx, batch_size=8, augment=lambda key, x: x,
                                    mesh=parallel.make_mesh())
  stacked = jax.tree_util.tree_map(lambda leaf: leaf[None], state)  # an ensemble of one
  copy = jax.tree_util.tree_map(jnp.array, stacked)
  for _ in range(2):
    stacked, _ = step(stacked, data)
    copy, _ = step(copy, data)
  jax.tree_util.tree_map(np.testing.assert_array_equal, stacked.params, copy.params)


def test_distill_step_trains_a_dropout_student_reproducibly():
  """Teacher (eval mode, no dropout) and student (train mode, dropout) share the model class here."""
  data = _data()
  model, tx, state = _state(step=0)
  _, _, teacher_state = _state(step=0, seed=1)
  teachers = jax.tree_util.tree_map(lambda leaf: leaf[None], {'params': teacher_state.params})
  spec = distill.DistillSpec(batch_size=8, augment=lambda key, x: x,
                             method=distill.LogitKD(temperature=4.0, alpha=0.5, kind='hard_argmax'))
  step = train.make_distill_step(model, model, tx, spec, parallel.make_mesh())
  copy = jax.tree_util.tree_map(jnp.array, state)
  for _ in range(2):
    state, step_metrics = step(state, teachers, data)
    copy, _ = step(copy, teachers, data)
  assert np.isfinite(step_metrics['loss'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, copy.params)


def _digits_step(loss_kind, temperature, cached):
  """A distillation step whose student is the teacher's architecture, and its inputs."""
  config = tiny_config()
  mesh = parallel.make_mesh()
  model = build_model(config.teacher.model, 10)
  _, _, data = random_device_data(4, (96, 8, 8, 1), 17, 0.3, 0.4, mesh)
  tx = train.make_optimizer(config.student.optimizer, 10, 3)
  spec = distill.DistillSpec(
      batch_size=32, augment=augment_lib.make_policy("none"),
      method=distill.LogitKD(temperature=temperature, alpha=0.0, kind=loss_kind),
      teachers=distill.CACHED_LOGITS if cached else distill.TEACHERS_IN_STEP)
  step = train.make_distill_step(model, model, tx, spec, mesh)
  return model, tx, data, step


@pytest.mark.parametrize("loss_kind", ["forward_kl", "reverse_kl", "brier"])
def test_logged_loss_is_zero_for_a_student_equal_to_its_teacher(loss_kind):
  model, tx, data, step = _digits_step(loss_kind, 4.0, cached=False)
  state = train.create_state(model, tx, jax.random.PRNGKey(5), (8, 8, 1))
  teacher = jax.tree.map(lambda x: x[None], train.model_variables(state))
  _, logged = step(state, teacher, data)
  assert abs(float(logged["loss"])) < 1e-5
  assert float(logged["agreement"]) == 1.0


def test_logged_loss_is_the_tempered_kl_and_the_gradient_is_the_papers():
  """loss = tau^2 KL(p_t^tau || p_s^tau), recomputed in NumPy; the update follows Eq. 1's
  gradient."""
  model, tx, data, step = _digits_step("forward_kl", 2.0, cached=False)
  student = train.create_state(model, tx, jax.random.PRNGKey(6), (8, 8, 1))
  teacher_state = train.create_state(model, tx, jax.random.PRNGKey(8), (8, 8, 1))
  teacher = jax.tree.map(lambda x: x[None], train.model_variables(teacher_state))
  indices = train.sample_indices(student.rng, 0, 96, 32)
  x = augment_lib.normalize(data.train_images[indices], data.mean, data.std)
  z_t = np.asarray(model.apply(train.model_variables(teacher_state), x, train=False), np.float64)
  z_s = np.asarray(model.apply(train.model_variables(student), x, train=True), np.float64)

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  lp_t, lp_s = log_softmax(z_t / 2.0), log_softmax(z_s / 2.0)
  expected = 4.0 * np.mean(np.sum(np.exp(lp_t) * (lp_t - lp_s), axis=-1))
  params_before = jax.device_get(student.params)
  new_state, logged = step(student, teacher, data)
  np.testing.assert_allclose(float(logged["loss"]), expected, rtol=1e-4)

  def eq1(params):
    logits = model.apply({"params": params}, x, train=True)
    return losses.distillation_loss(logits, jnp.asarray(z_t, jnp.float32), None, alpha=0.0,
                                    temperature=2.0)

  grads = jax.grad(eq1)(params_before)
  expected_state, _ = train._apply_gradients(  # pylint: disable=protected-access
      train.create_state(model, tx, jax.random.PRNGKey(6), (8, 8, 1)), tx, grads, {})
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cached_teacher_logits_give_the_same_steps_as_in_step_teachers():
  model, tx, data, in_step = _digits_step("forward_kl", 4.0, cached=False)
  _, _, _, cached_step = _digits_step("forward_kl", 4.0, cached=True)
  teacher_states = [train.create_state(model, tx, jax.random.PRNGKey(k), (8, 8, 1)) for k in (1, 2)]
  teachers = jax.tree.map(lambda *xs: jnp.stack(xs), *map(train.model_variables, teacher_states))
  x = augment_lib.normalize(data.train_images, data.mean, data.std)
  members = jax.vmap(lambda v: model.apply(v, x, train=False))(teachers)
  table = losses.ensemble_log_probs(members)
  # Two copies: each step donates (consumes) the state it is given.
  a, b = (train.create_state(model, tx, jax.random.PRNGKey(3), (8, 8, 1)) for _ in range(2))
  for _ in range(6):  # two epochs of 3 steps
    a, logged_a = in_step(a, teachers, data)
    b, logged_b = cached_step(b, table, data)
    for key in logged_a:  # the logged loss is a difference of float32 objectives of about 30
      np.testing.assert_allclose(logged_a[key], logged_b[key], rtol=1e-4, atol=5e-5, err_msg=key)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(leaf_a, leaf_b, rtol=1e-4, atol=1e-6)


def test_update_norms_match_numpy():
  """grad/update/param norms of one step against NumPy on the same arrays."""
  import jax
  import jax.numpy as jnp
  import optax
  params = {"w": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0, 2.0]])}
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  tx = optax.sgd(0.1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                           opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
  new_state, norms = train._apply_gradients(state, tx, grads, {})  # pylint: disable=protected-access
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
  g, p = flat(grads), flat(params)
  np.testing.assert_allclose(norms["grad_norm"], np.linalg.norm(g), rtol=1e-6)
  np.testing.assert_allclose(norms["update_norm"], np.linalg.norm(0.1 * g), rtol=1e-6)
  np.testing.assert_allclose(norms["param_norm"], np.linalg.norm(p - 0.1 * g), rtol=1e-6)
  np.testing.assert_allclose(flat(new_state.params), p - 0.1 * g, rtol=1e-6)


def test_draw_is_a_pure_function_of_key_and_step():
  """A resumed run recomputes step t's batch from (rng, t) alone: eager, jitted, vmapped alike."""
  num_examples, batch_size = 1797, 128
  ids = jnp.arange(num_examples, dtype=jnp.int32)
  rng = jax.random.PRNGKey(7)
  steps = jnp.array([0, 5, 13, 14, 40], jnp.int32)
  batched = np.asarray(jax.jit(jax.vmap(
      lambda s: train.sample_batch(rng, s, ids, ids, batch_size)[0]))(steps))
  for row, step in zip(batched, steps):
    eager_images, eager_labels = train.sample_batch(rng, int(step), ids, ids * 10, batch_size)
    np.testing.assert_array_equal(np.asarray(eager_images), row)
    np.testing.assert_array_equal(np.asarray(eager_labels), row * 10)  # images and labels agree


def test_too_few_examples_is_an_error():
  ids = jnp.arange(10)
  with pytest.raises(ValueError, match="fewer than the batch size"):
    train.sample_batch(jax.random.PRNGKey(0), 0, ids, ids, 16)


# ---------------------------------------------------------------------------------------------------
# Learning-rate schedules


def _step_optimizer_config(**overrides):
  from kd_jax import config as kd_config
  return kd_config.optimizer_config(schedule="step", learning_rate=0.05, decay_epochs=(3, 5, 7),
                                    decay_factor=0.1, **overrides)


def test_step_schedule_matches_a_hand_computation_per_epoch():
  """The rate of epoch e (counted from 1) is lr * factor^(number of decay epochs < e), as
  RepDistiller's adjust_learning_rate computes it before each epoch."""
  steps_per_epoch, epochs = 4, 9
  schedule = train.learning_rate_schedule(_step_optimizer_config(), epochs * steps_per_epoch,
                                          steps_per_epoch)
  expected = []
  for count in range(epochs * steps_per_epoch):
    epoch = count // steps_per_epoch + 1
    expected.append(0.05 * 0.1 ** sum(1 for d in (3, 5, 7) if epoch > d))
  got = [float(schedule(count)) for count in range(epochs * steps_per_epoch)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[11] == pytest.approx(0.05) and got[12] == pytest.approx(0.005)


def test_step_schedule_boundaries_fall_where_decay_epochs_start():
  steps_per_epoch = 7
  cfg = _step_optimizer_config()
  assert train.decay_boundaries(cfg, steps_per_epoch) == (21, 35, 49)
  schedule = train.learning_rate_schedule(cfg, 70, steps_per_epoch)
  values = np.array([float(schedule(count)) for count in range(70)])
  changes = [count for count in range(1, 70) if values[count] != values[count - 1]]
  assert changes == [21, 35, 49]


def test_sgd_applies_the_step_schedule_at_the_optimizer_count():
  """Plain SGD without weight decay or momentum moves a parameter by -lr(count) * grad: the update
  of the k-th step (count k - 1 before it) uses the rate of count k - 1."""
  cfg = _step_optimizer_config(momentum=0.0, weight_decay=0.0)
  tx = train.make_optimizer(cfg, total_steps=12, steps_per_epoch=1)
  params = {"w": jnp.zeros(())}
  opt_state = tx.init(params)
  moves = []
  for _ in range(9):
    updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
    moves.append(-float(updates["w"]))
  np.testing.assert_allclose(moves, [0.05] * 3 + [0.005] * 2 + [5e-4] * 2 + [5e-5] * 2, rtol=1e-6)


def test_step_schedule_after_a_linear_warmup():
  cfg = _step_optimizer_config(warmup_epochs=2.0)
  schedule = train.learning_rate_schedule(cfg, 36, steps_per_epoch=4)
  got = [float(schedule(count)) for count in range(16)]
  np.testing.assert_allclose(got[:8], [0.05 * count / 8 for count in range(8)], rtol=1e-6)
  np.testing.assert_allclose(got[8:12], [0.05] * 4, rtol=1e-6)
  np.testing.assert_allclose(got[12:], [0.005] * 4, rtol=1e-6)


def test_the_default_schedule_is_the_cosine():
  from kd_jax import config as kd_config
  cfg = kd_config.optimizer_config(learning_rate=0.1, final_learning_rate=0.001)
  assert cfg.schedule == "cosine"
  schedule = train.learning_rate_schedule(cfg, 100, 10)
  expected = [0.001 + 0.5 * (0.1 - 0.001) * (1 + np.cos(np.pi * t / 100)) for t in (0, 30, 100)]
  np.testing.assert_allclose([float(schedule(t)) for t in (0, 30, 100)], expected, rtol=1e-5)
