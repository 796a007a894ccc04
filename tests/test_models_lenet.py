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


def _logits_and_grads(apply, params, x):
  loss = lambda p: jnp.sum(jax.nn.log_softmax(apply(p, x))[:, 0])
  return apply(params, x), jax.grad(loss)(params)


def _assert_same(got, want, exact_logits=True):
  (got_logits, got_grads), (want_logits, want_grads) = got, want
  if exact_logits:
    np.testing.assert_array_equal(np.asarray(got_logits), np.asarray(want_logits))
  else:
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), rtol=1e-5,
                               atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_grads,
               want_grads)


def _reference_lenet5(params, x, pool):
  """LeNet-5 written out with lax/jnp operations and the given 2x2 pooling function."""
  def conv(x, p, padding):
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"]

  dense = lambda x, p: x @ p["kernel"] + p["bias"]
  x = pool(jax.nn.relu(conv(x, params["Conv_0"], "SAME")), (2, 2), strides=(2, 2))
  x = pool(jax.nn.relu(conv(x, params["Conv_1"], "VALID")), (2, 2), strides=(2, 2))
  x = jax.nn.relu(dense(x.reshape(x.shape[0], -1), params["Dense_0"]))
  x = jax.nn.relu(dense(x, params["Dense_1"]))
  return dense(x, params["Dense_2"])


@pytest.mark.parametrize("impl,pool", [("reshape", lenet.max_pool), ("reduce_window", nn.max_pool)])
def test_max_pool_impl_selects_its_pooling(impl, pool):
  """LeNet5(max_pool_impl=...) is the network pooled by that function (checked against the network
  written out by hand); the default is 'reshape'."""
  model = LeNet5(num_classes=10, pooling="max", max_pool_impl=impl)
  x = jax.random.normal(jax.random.PRNGKey(4), (8, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(5), x)["params"]
  ours = _logits_and_grads(lambda p, x: model.apply({"params": p}, x), params, x)
  reference = _logits_and_grads(lambda p, x: _reference_lenet5(p, x, pool), params, x)
  _assert_same(ours, reference, exact_logits=False)
  assert LeNet5(num_classes=10).max_pool_impl == "reshape"


def test_lenet5_outputs_and_gradients_unchanged():
  """The whole network against the same network pooled by nn.max_pool: same logits and gradients."""
  x = jax.random.normal(jax.random.PRNGKey(4), (8, 28, 28, 1))
  outputs = []
  for impl in lenet.MAX_POOL_IMPLS:
    model = LeNet5(num_classes=10, pooling="max", max_pool_impl=impl)
    params = model.init(jax.random.PRNGKey(5), x)["params"]
    outputs.append(_logits_and_grads(lambda p, x: model.apply({"params": p}, x), params, x))
  _assert_same(*outputs)


def test_average_pooling_ignores_the_max_pool_impl():
  x = jax.random.normal(jax.random.PRNGKey(6), (2, 28, 28, 1))
  logits = []
  for impl in lenet.MAX_POOL_IMPLS:
    model = LeNet5(num_classes=10, max_pool_impl=impl)
    logits.append(np.asarray(model.apply(model.init(jax.random.PRNGKey(7), x), x)))
  np.testing.assert_array_equal(*logits)


def test_unknown_max_pool_impl_is_refused():
  model = LeNet5(num_classes=10, pooling="max", max_pool_impl="fast")
  with pytest.raises(ValueError, match="max_pool_impl 'fast'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_torch_init_is_pytorchs_default_uniform_within_one_over_root_fan_in():
  """model.init='torch': every LeNet-5 weight and bias ~ U(+-1/sqrt(fan_in)) (bound and variance
  1 / (3 fan_in)); PreResNet's output layer the same, its convolutions unchanged."""

  from kd_jax import config as kd_config  # pylint: disable=import-outside-toplevel
  from kd_jax.models import build_model  # pylint: disable=import-outside-toplevel
  model = build_model(kd_config.model_config(name="lenet5", init="torch"), 10)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
  fan_ins = {"Conv_0": 25, "Conv_1": 150, "Dense_0": 400, "Dense_1": 120, "Dense_2": 84}
  for layer, fan_in in fan_ins.items():
    bound = 1 / np.sqrt(fan_in)
    for name in ("kernel", "bias"):
      values = np.asarray(params[layer][name]).ravel()
      assert np.all(np.abs(values) <= bound)
      if values.size >= 100:  # the draws come near the bound
        assert np.abs(values).max() > 0.9 * bound
    kernel = np.asarray(params[layer]["kernel"]).ravel()
    if kernel.size >= 1000:  # enough draws for the variance to within 10 %
      assert np.var(kernel) == pytest.approx(1 / (3 * fan_in), rel=0.1)
  flax_params = build_model(kd_config.model_config(name="lenet5"), 10).init(
      jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
  assert not np.any(np.asarray(flax_params["Dense_0"]["bias"]))  # flax: zero biases

  resnet = build_model(kd_config.model_config(name="preresnet", depth=8, norm="layer",
                                              init="torch"), 10)
  reference = build_model(kd_config.model_config(name="preresnet", depth=8, norm="layer"), 10)
  x = np.zeros((1, 32, 32, 3), np.float32)
  torch_p = resnet.init(jax.random.PRNGKey(0), x)["params"]
  flax_p = reference.init(jax.random.PRNGKey(0), x)["params"]
  head = np.asarray(torch_p["Dense_0"]["kernel"])
  assert np.abs(head).max() <= 1 / 8 and np.abs(np.asarray(torch_p["Dense_0"]["bias"])).max() > 0
  np.testing.assert_array_equal(torch_p["Conv_0"]["kernel"], flax_p["Conv_0"]["kernel"])
  with pytest.raises(Exception, match="implemented for lenet5 and preresnet"):
    build_model(kd_config.model_config(name="mlp", init="torch"), 10)
