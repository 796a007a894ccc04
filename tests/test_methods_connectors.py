"""OFD and ReviewKD (kd_jax.methods), the methods with connectors on pre-ReLU features, against
NumPy transcriptions: OFD's margins, both losses and their gradients (float64), ReviewKD's
warm-up."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import methods_numpy as npm
from kd_jax.errors import KdJaxError
from kd_jax.methods import OFD, MethodInputs, ReviewKD
from kd_jax.methods.ofd import margins

CLASSES = 4


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _maps(rng, batch, stages):
  return tuple(jnp.asarray(rng.normal(size=(batch, size, size, channels)))
               for channels, size in stages)


def _inputs(seed, batch, student_stages, teacher_stages, pooled=(5, 6), step=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, batch)
  labels[-1] = -1
  student_preact = _maps(rng, batch, student_stages)
  teacher_preact = _maps(rng, batch, teacher_stages)
  return MethodInputs(
      student_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      teacher_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      labels=jnp.asarray(labels, jnp.int32),
      student_features=tuple(jnp.maximum(f, 0) for f in student_preact)
      + (jnp.asarray(rng.normal(size=(batch, pooled[0]))),),
      teacher_features=tuple(jnp.maximum(f, 0) for f in teacher_preact)
      + (jnp.asarray(rng.normal(size=(batch, pooled[1]))),),
      student_preact_features=student_preact, teacher_preact_features=teacher_preact,
      step=jnp.int32(step))


def _np_margin(mean, std):
  s = abs(std)
  tail = 0.5 * (1 + math.erf(-mean / s / math.sqrt(2)))
  if tail > 0.001:
    return mean - s * math.exp(-(mean / s) ** 2 / 2) / math.sqrt(2 * math.pi) / tail
  return -3 * s


def test_ofd_margins_match_numpy():
  means = np.array([0.0, 0.5, -1.0, 2.0, 4.0, -0.2])
  stds = np.array([1.0, -0.3, 2.0, 0.5, 1.0, 0.1])  # a negative BN scale counts by its size
  expected = [_np_margin(m, s) for m, s in zip(means, stds)]
  np.testing.assert_allclose(margins(means, stds), expected, rtol=1e-6)
  np.testing.assert_allclose(margins([4.0], [1.0]), [-3.0])  # Phi(-4) < 0.001: -3 sigma
  # The margin is E[x | x < 0] of N(mean, std^2): a Monte Carlo check of one channel.
  x = np.random.default_rng(0).normal(0.5, 1.0, 2_000_000)
  np.testing.assert_allclose(margins([0.5], [1.0]), [x[x < 0].mean()], rtol=5e-3)


def _np_partial_l2(s, t, m):
  return ((s - m) ** 2 * ((s > m) & (t <= m)) + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
          + (s - t) ** 2 * (t > 0))


@pytest.mark.parametrize("kernel", [1, 3])
def test_ofd_matches_numpy(kernel):
  # Three student stages and two teacher stages: the last two of each pair up; the teacher's
  # first map is twice the student's size and is pooled to it.
  student_stages, teacher_stages = ((2, 8), (3, 4), (4, 2)), ((5, 8), (6, 2))
  inputs = _inputs(0, 4, student_stages, teacher_stages)
  rng = np.random.default_rng(1)
  bn_mean = [rng.normal(size=c) for c, _ in teacher_stages]
  bn_std = [rng.normal(size=c) for c, _ in teacher_stages]
  method = OFD(feat_weight=0.5, ce_weight=0.7, connector_kernel=kernel)
  params, state = method.init(jax.random.key(0), inputs, teacher_bn_mean=bn_mean,
                              teacher_bn_std=bn_std)
  assert params["connector_0"]["conv"]["kernel"].shape == (kernel, kernel, 3, 5)
  params, state = npm.to_float64(params), npm.to_float64(state)
  stage_margins = [np.array([_np_margin(m, s) for m, s in zip(ms, ss)])
                   for ms, ss in zip(bn_mean, bn_std)]
  teacher, labels = npm.to_numpy(inputs.teacher_preact_features), np.asarray(inputs.labels)

  def numpy_loss(p):
    p = npm.to_numpy(p)
    total = 0.0
    for i, (s, t, m) in enumerate(zip(p["preact"][1:], teacher, stage_margins)):
      connector = p["params"][f"connector_{i}"]
      s = npm.conv2d(s, connector["conv"]["kernel"], padding=(kernel - 1) // 2)
      s = npm.batch_norm_train(s, connector["norm"]["scale"], connector["norm"]["bias"])
      t = npm.adaptive_avg_pool(t, s.shape[1:3])
      total += _np_partial_l2(s, t, m).sum() / len(s) / 2 ** (1 - i)
    return 0.7 * npm.labelled_ce(p["logits"], labels) + 0.5 * total

  def jax_loss(p):
    moved = inputs.replace(student_logits=p["logits"], student_preact_features=p["preact"])
    loss, new_state, _ = method.loss(p["params"], state, moved, jax.random.key(1))
    return loss, new_state

  point = {"params": params, "logits": inputs.student_logits,
           "preact": inputs.student_preact_features}
  new_state = npm.check_value_and_gradient(jax_loss, numpy_loss, point)
  np.testing.assert_allclose(new_state["margins"][1], stage_margins[1], rtol=1e-6)


def test_ofd_needs_bn_statistics_per_teacher_stage():
  inputs = _inputs(2, 3, ((2, 4), (3, 2)), ((4, 4), (5, 2)))
  with pytest.raises(KdJaxError, match="one array per teacher stage"):
    OFD().init(jax.random.key(0), inputs, teacher_bn_mean=[np.zeros(5)],
               teacher_bn_std=[np.ones(5)])
  with pytest.raises(KdJaxError, match="4 channels"):
    OFD().init(jax.random.key(0), inputs, teacher_bn_mean=[np.zeros(3), np.zeros(5)],
               teacher_bn_std=[np.ones(3), np.ones(5)])


def _np_abf(params, x, residual, out_size):
  x = x @ params["conv1"]["kernel"][0, 0]
  x = npm.batch_norm_train(x, params["norm1"]["scale"], params["norm1"]["bias"])
  if residual is not None:
    residual = npm.nearest_resize(residual, x.shape[1:3])
    z = np.concatenate([x, residual], axis=-1) @ params["attention"]["kernel"][0, 0]
    z = 1 / (1 + np.exp(-(z + params["attention"]["bias"])))
    x = x * z[..., :1] + residual * z[..., 1:]
  if x.shape[1:3] != tuple(out_size):
    x = npm.nearest_resize(x, out_size)
  out = npm.conv2d(x, params["conv2"]["kernel"], padding=1)
  return npm.batch_norm_train(out, params["norm2"]["scale"], params["norm2"]["bias"]), x


def _np_hcl(s, t):
  loss, weight, total = np.mean((s - t) ** 2), 1.0, 1.0
  for size in (4, 2, 1):
    if size < s.shape[1]:
      weight /= 2
      loss += weight * np.mean((npm.adaptive_avg_pool(s, (size, size))
                                - npm.adaptive_avg_pool(t, (size, size))) ** 2)
      total += weight
  return loss / total


LAYOUTS = [
    # equal sizes; the student's levels upsampled to a teacher twice as wide; one student stage more
    (((4, 8), (6, 4)), ((5, 8), (7, 4))),
    (((4, 4), (6, 2)), ((5, 8), (7, 4))),
    (((3, 8), (4, 4), (6, 2)), ((5, 4), (7, 2))),
]


@pytest.mark.parametrize("student_stages,teacher_stages", LAYOUTS)
def test_reviewkd_matches_numpy(student_stages, teacher_stages):
  inputs = _inputs(3, 4, student_stages, teacher_stages, step=5)
  method = ReviewKD(reviewkd_weight=2.0, ce_weight=0.6, warmup_epochs=4, steps_per_epoch=2)
  params, _ = method.init(jax.random.key(0), inputs)
  params = npm.to_float64(params)
  mid = 5  # min(512, the student's pooled width)
  assert params["abf_0"]["conv1"]["kernel"].shape == (1, 1, student_stages[-2][0], mid)
  assert "attention" not in params["abf_2"]  # the deepest level, the pooled one, fuses nothing
  teacher = [np.asarray(t) for t in inputs.teacher_preact_features[-2:]] + [
      np.asarray(inputs.teacher_features[-1])[:, None, None, :]]
  labels = np.asarray(inputs.labels)
  warmup = 3 / 4  # step 5: epoch 5 // 2 + 1 = 3 of 4

  def numpy_loss(p):
    p = npm.to_numpy(p)
    levels = list(p["features"][:-1][-2:]) + [p["features"][-1][:, None, None, :]]
    hcl, residual = 0.0, None
    for i in reversed(range(3)):
      out, residual = _np_abf(p["params"][f"abf_{i}"], levels[i], residual, teacher[i].shape[1:3])
      hcl += _np_hcl(out, teacher[i])
    return 0.6 * npm.labelled_ce(p["logits"], labels) + 2.0 * warmup * hcl

  def jax_loss(p):
    moved = inputs.replace(student_logits=p["logits"], student_features=p["features"])
    loss, _, metrics = method.loss(p["params"], {}, moved, jax.random.key(1))
    return loss, metrics

  point = {"params": params, "logits": inputs.student_logits, "features": inputs.student_features}
  metrics = npm.check_value_and_gradient(jax_loss, numpy_loss, point)
  np.testing.assert_allclose(metrics["warmup"], warmup)


def test_reviewkd_warmup_is_linear_in_the_one_based_epoch():
  method = ReviewKD(steps_per_epoch=100)
  inputs = _inputs(4, 3, ((2, 4), (3, 2)), ((4, 4), (5, 2)))
  params, state = method.init(jax.random.key(0), inputs)
  loss = jax.jit(method.loss)
  for step, factor in [(0, 0.05), (99, 0.05), (100, 0.1), (1999, 1.0), (10**6, 1.0)]:
    _, _, metrics = loss(params, state, inputs.replace(step=jnp.int32(step)), jax.random.key(1))
    np.testing.assert_allclose(metrics["warmup"], factor, rtol=1e-6)
    np.testing.assert_allclose(metrics["distill"], 5.0 * factor * metrics["hcl"], rtol=1e-6)
