"""LeNet-5's max pooling (pooling='max') as a reshape and a max (kd_jax/models/lenet.py): nn.max_pool's
values and, away from ties, its gradient; checked against NumPy and flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import LeNet5, lenet


def _numpy_max_pool(x, k):
  n, h, w, c = x.shape
  out = np.full((n, h // k, w // k, c), -np.inf, x.dtype)
  for i in range(h // k * k):
    for j in range(w // k * k):
      out[:, i // k, j // k] = np.maximum(out[:, i // k, j // k], x[:, i, j])
  return out


@pytest.mark.parametrize("shape", [(2, 28, 28, 6), (3, 10, 10, 16), (1, 4, 6, 1)])
def test_values_match_numpy_and_flax(shape):
  x = np.asarray(jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), shape)))  # ties at 0 too
  got = np.asarray(lenet.max_pool(jnp.asarray(x), (2, 2), strides=(2, 2)))
  np.testing.assert_array_equal(got, _numpy_max_pool(x, 2))
  np.testing.assert_array_equal(got, np.asarray(nn.max_pool(jnp.asarray(x), (2, 2), strides=(2, 2))))


def test_gradient_matches_flax_without_ties():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 10, 10, 16))  # continuous: no ties
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 5, 16))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x, (2, 2), strides=(2, 2)) * cotangent))(x)
  np.testing.assert_array_equal(np.asarray(grad(lenet.max_pool)), np.asarray(grad(nn.max_pool)))


def test_overlapping_or_ragged_windows_fall_back_to_flax():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 9, 3))
  for window, strides in (((2, 2), (2, 2)), ((3, 3), (1, 1)), ((2, 2), (1, 2))):
    np.testing.assert_array_equal(np.asarray(lenet.max_pool(x, window, strides=strides)),
                                  np.asarray(nn.max_pool(x, window, strides=strides)))


def test_lenet5_outputs_and_gradients_unchanged(monkeypatch):
  """The whole network against the same network pooled by nn.max_pool: same logits and gradients."""
  model = LeNet5(num_classes=10, pooling="max")
  x = jax.random.normal(jax.random.PRNGKey(4), (8, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(5), x)

  def logits_and_grads():
    loss = lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, x))[:, 0])
    return model.apply(variables, x), jax.grad(loss)(variables["params"])

  ours = logits_and_grads()
  monkeypatch.setitem(lenet._POOL, "max", nn.max_pool)
  reference = logits_and_grads()
  np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(reference[0]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours[1],
               reference[1])
