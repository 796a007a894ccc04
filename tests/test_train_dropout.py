"""Dropout in the compiled train steps: masks are drawn from (state.rng, step), so resume is exact."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import parallel, train
from kd_jax import distill
from kd_jax.data import placement


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
