"""The train steps' batch draw: an O(batch) keyed order of the train set per epoch (kd_jax/data/order.py).

Checked against plain NumPy bookkeeping: every example drawn exactly once per epoch, the left-out
examples are the order's last N % B positions, orders differ across epochs and keys, and the draw is
a pure function of (key, step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import train
from kd_jax.data import order


def _epoch_batches(rng, epoch, num_examples, batch_size):
  """Every batch of one epoch as an (S, B) array of example ids, drawn with train.sample_batch."""
  ids = jnp.arange(num_examples, dtype=jnp.int32)
  steps_per_epoch = num_examples // batch_size
  draw = jax.jit(jax.vmap(lambda step: train.sample_batch(rng, step, ids, ids, batch_size)[0]))
  steps = epoch * steps_per_epoch + jnp.arange(steps_per_epoch)
  return np.asarray(draw(steps))


@pytest.mark.parametrize("num_examples", [1, 2, 3, 4, 5, 17, 64, 1000, 1797, 4099])
def test_permute_is_a_bijection(num_examples):
  key = jax.random.PRNGKey(num_examples)
  values = np.asarray(order.permute(key, jnp.arange(num_examples), num_examples))
  assert values.dtype == np.int32
  np.testing.assert_array_equal(np.sort(values), np.arange(num_examples))


@pytest.mark.parametrize("bits", [2, 3, 4, 7, 10])
def test_feistel_permutes_its_power_of_two_domain(bits):
  """Cycle walking is only a bijection of [0, N) if the network is one of [0, 2^k), odd k included."""
  round_keys = jax.random.bits(jax.random.PRNGKey(bits), (order.ROUNDS,), jnp.uint32)
  values = np.asarray(order.feistel(round_keys, jnp.arange(2**bits, dtype=jnp.uint32), bits))
  np.testing.assert_array_equal(np.sort(values), np.arange(2**bits))


@pytest.mark.parametrize("num_examples,batch_size", [(64, 8), (100, 7), (1000, 128), (1797, 128),
                                                     (129, 128), (5, 5)])
def test_every_example_once_per_epoch(num_examples, batch_size):
  rng = jax.random.PRNGKey(0)
  steps_per_epoch = num_examples // batch_size
  orders = []
  for epoch in range(3):
    batches = _epoch_batches(rng, epoch, num_examples, batch_size)
    drawn = batches.ravel()
    assert len(np.unique(drawn)) == steps_per_epoch * batch_size  # no example twice in an epoch
    # The examples left out are exactly those at the epoch order's last N % B positions.
    left_out = np.setdiff1d(np.arange(num_examples), drawn)
    epoch_key = jax.random.fold_in(jax.random.fold_in(rng, train._ORDER_STREAM), epoch)
    tail = order.permute(epoch_key, jnp.arange(steps_per_epoch * batch_size, num_examples),
                         num_examples)
    np.testing.assert_array_equal(np.sort(np.asarray(tail)), left_out)
    orders.append(drawn)
  if num_examples > 5:
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_orders_differ_across_keys_and_epochs():
  num_examples, batch_size = 1000, 100
  a0 = _epoch_batches(jax.random.PRNGKey(0), 0, num_examples, batch_size)
  a1 = _epoch_batches(jax.random.PRNGKey(0), 1, num_examples, batch_size)
  b0 = _epoch_batches(jax.random.PRNGKey(1), 0, num_examples, batch_size)
  for x, y in ((a0, a1), (a0, b0), (a1, b0)):
    # Two independent uniform orders put the same example at the same position ~once (E = 1).
    assert np.sum(x.ravel() == y.ravel()) < 10
    # The first batches share about B^2 / N = 10 examples; identical or disjoint would be suspicious.
    assert 0 < len(np.intersect1d(x[0], y[0])) < 30


def test_order_is_not_trivially_structured():
  num_examples, batch_size = 60_000, 128
  batches = _epoch_batches(jax.random.PRNGKey(0), 0, num_examples, batch_size)
  first = batches[0]
  assert not np.all(np.diff(first) > 0) and not np.all(np.diff(first) < 0)  # not sorted
  assert np.max(np.abs(np.diff(first))) > 1000  # not a contiguous run
  # Position and example id are uncorrelated over the epoch (|r| ~ 1/sqrt(N) = 0.004 if random).
  drawn = batches.ravel()
  assert abs(np.corrcoef(np.arange(drawn.size), drawn)[0, 1]) < 0.02
  # Each batch's ids are spread over [0, N) like a uniform sample: its mean is near N / 2 within a
  # few standard errors (N / sqrt(12 B) = 1531), for every batch of the epoch.
  batch_means = batches.mean(axis=1)
  assert np.all(np.abs(batch_means - num_examples / 2) < 5 * num_examples / np.sqrt(12 * batch_size))
  # Which tenth of the set each of 10 consecutive batches draws from is close to uniform (chi-square
  # with 9 degrees of freedom, 1,280 draws; 27.9 is its 0.999 quantile).
  counts = np.bincount(batches[:10].ravel() * 10 // num_examples, minlength=10)
  expected = batches[:10].size / 10
  assert np.sum((counts - expected) ** 2 / expected) < 27.9


def test_position_of_an_example_is_uniform_over_keys():
  """Over 2,000 keys, where example 0 lands in an order of 20 is uniform (chi-square, 19 dof)."""
  num_examples, num_keys = 20, 2000
  keys = jax.random.split(jax.random.PRNGKey(3), num_keys)
  orders = np.asarray(jax.vmap(lambda k: order.permute(k, jnp.arange(num_examples), num_examples))(
      keys))
  positions = np.argmax(orders == 0, axis=1)
  counts = np.bincount(positions, minlength=num_examples)
  expected = num_keys / num_examples
  assert np.sum((counts - expected) ** 2 / expected) < 43.8  # 0.999 quantile of chi-square(19)
