"""KD, DKD, DIST and logit standardization (kd_jax.methods) against NumPy transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.errors import KdJaxError
from kd_jax.methods import DIST, DKD, KD, MethodInputs, common, make_method
from methods_numpy import check_value_and_gradient, labelled_ce, log_softmax, softmax

SHAPES = [(5, 4), (8, 10)]


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _logit_inputs(seed, batch, classes, step=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, batch)
  labels[1 % batch] = -1  # one unlabelled row
  return MethodInputs(student_logits=jnp.asarray(rng.normal(scale=2.0, size=(batch, classes))),
                      teacher_logits=jnp.asarray(rng.normal(scale=3.0, size=(batch, classes))),
                      labels=jnp.asarray(labels, jnp.int32), step=jnp.int32(step))


def _standardized(z):
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=-1, keepdims=True)
  std = np.sqrt(((z - mean) ** 2).sum(axis=-1, keepdims=True) / (z.shape[-1] - 1))
  return (z - mean) / (1e-7 + std)


def _loss(method, inputs):
  return method.loss({}, {}, inputs, jax.random.key(0))


def _check(method, inputs, numpy_loss):
  """Value and student-logit gradient of `method` against `numpy_loss(student_logits)`."""
  def jax_loss(z):
    loss, state, metrics = _loss(method, inputs.replace(student_logits=z))
    return loss, (state, metrics)

  state, metrics = check_value_and_gradient(jax_loss, numpy_loss, inputs.student_logits)
  np.testing.assert_allclose(metrics["ce"] + metrics["distill"],
                             numpy_loss(np.asarray(inputs.student_logits)), rtol=1e-9)
  assert state == {}


def _np_kd(student, teacher, labels, temperature, ce_weight, kd_weight, standardize):
  s, t = (_standardized(student), _standardized(teacher)) if standardize else (student, teacher)
  kl = [np.sum(softmax(t[b] / temperature) * (log_softmax(t[b] / temperature)
                                              - log_softmax(s[b] / temperature)))
        for b in range(len(labels))]
  return ce_weight * labelled_ce(student, labels) + kd_weight * temperature**2 * np.mean(kl)


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("standardize", [False, True])
def test_kd_matches_numpy(batch, classes, standardize):
  inputs = _logit_inputs(0, batch, classes)
  method = KD(temperature=3.0, ce_weight=0.3, kd_weight=0.7, logit_standardization=standardize)
  teacher, labels = np.asarray(inputs.teacher_logits), np.asarray(inputs.labels)
  _check(method, inputs, lambda z: _np_kd(z, teacher, labels, 3.0, 0.3, 0.7, standardize))


def test_kd_gradient_is_tau_times_probability_gap():
  """d/dz_s of w_kd tau^2 mean_b KL = w_kd tau (p_s - p_t) / B (the hand derivation)."""
  inputs = _logit_inputs(1, 6, 5)
  method = KD(temperature=4.0, ce_weight=0.0, kd_weight=0.9)
  gradient = jax.grad(lambda z: _loss(method, inputs.replace(student_logits=z))[0])(
      inputs.student_logits)
  student, teacher = np.asarray(inputs.student_logits), np.asarray(inputs.teacher_logits)
  gap = softmax(student / 4) - softmax(teacher / 4)
  np.testing.assert_allclose(gradient, 0.9 * 4 * gap / 6, rtol=1e-10, atol=1e-14)


def test_kd_defaults_are_mdistillers():
  assert (KD().temperature, KD().ce_weight, KD().kd_weight) == (4.0, 0.1, 0.9)


def test_standardize_logits_matches_numpy():
  z = np.random.default_rng(2).normal(size=(4, 7)) * 5 + 3
  np.testing.assert_allclose(common.standardize_logits(jnp.asarray(z)), _standardized(z),
                             rtol=1e-12)


def test_standardized_kd_has_a_finite_gradient_for_constant_logits():
  inputs = _logit_inputs(10, 3, 4)
  inputs = inputs.replace(student_logits=jnp.zeros_like(inputs.student_logits))
  method = KD(logit_standardization=True)
  gradient = jax.grad(lambda z: _loss(method, inputs.replace(student_logits=z))[0])(
      inputs.student_logits)
  assert np.all(np.isfinite(gradient))


def test_standardized_kd_ignores_shift_and_scale_of_the_logits():
  inputs = _logit_inputs(3, 6, 8)
  method = KD(ce_weight=0.0, logit_standardization=True)
  base = _loss(method, inputs)[0]
  moved = inputs.replace(student_logits=2.5 * inputs.student_logits + 4.0,
                         teacher_logits=0.3 * inputs.teacher_logits - 1.0)
  np.testing.assert_allclose(_loss(method, moved)[0], base, rtol=1e-6)


def _np_dkd(student, teacher, labels, alpha, beta, temperature, ce_weight, warmup, standardize):
  s, t = (_standardized(student), _standardized(teacher)) if standardize else (student, teacher)
  tckd, nckd = [], []
  for b, label in enumerate(labels):
    if label < 0:
      continue
    p_s, p_t = softmax(s[b] / temperature), softmax(t[b] / temperature)
    b_s = np.array([p_s[label], 1 - p_s[label]])
    b_t = np.array([p_t[label], 1 - p_t[label]])
    tckd.append(np.sum(b_t * np.log(b_t / b_s)))
    rest_s, rest_t = np.delete(p_s, label), np.delete(p_t, label)
    rest_s, rest_t = rest_s / rest_s.sum(), rest_t / rest_t.sum()
    nckd.append(np.sum(rest_t * np.log(rest_t / rest_s)))
  distill = temperature**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))
  return ce_weight * labelled_ce(student, labels) + warmup * distill


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("standardize", [False, True])
def test_dkd_matches_numpy(batch, classes, standardize):
  inputs = _logit_inputs(4, batch, classes, step=7)
  method = DKD(alpha=1.5, beta=6.0, temperature=2.0, ce_weight=0.5, warmup_epochs=4,
               steps_per_epoch=3, logit_standardization=standardize)
  teacher, labels = np.asarray(inputs.teacher_logits), np.asarray(inputs.labels)
  warmup = 3 / 4  # step 7 lies in epoch 7 // 3 + 1 = 3 of 4 warm-up epochs
  _check(method, inputs,
         lambda z: _np_dkd(z, teacher, labels, 1.5, 6.0, 2.0, 0.5, warmup, standardize))


def test_dkd_warmup_is_linear_in_the_one_based_epoch():
  method = DKD(steps_per_epoch=10)
  loss = jax.jit(method.loss)
  inputs = _logit_inputs(5, 6, 5)
  for step, factor in [(0, 1 / 20), (9, 1 / 20), (10, 2 / 20), (189, 19 / 20), (190, 1.0),
                       (5000, 1.0)]:
    _, _, metrics = loss({}, {}, inputs.replace(step=jnp.int32(step)), jax.random.key(0))
    np.testing.assert_allclose(metrics["warmup"], factor, rtol=1e-6)
    np.testing.assert_allclose(metrics["distill"],
                               factor * (1.0 * metrics["tckd"] + 8.0 * metrics["nckd"]), rtol=1e-6)


def test_dkd_terms_decouple_the_kl():
  """alpha = 1 and beta = 1 - p_t,g per row would give the KL back: check on one labelled row."""
  inputs = _logit_inputs(6, 1, 6).replace(labels=jnp.asarray([2], jnp.int32))  # row 0 labelled
  _, _, metrics = _loss(DKD(temperature=1.0, warmup_epochs=0), inputs)
  s, t = np.asarray(inputs.student_logits[0]), np.asarray(inputs.teacher_logits[0])
  kl = np.sum(softmax(t) * (log_softmax(t) - log_softmax(s)))
  np.testing.assert_allclose(metrics["tckd"] + (1 - softmax(t)[2]) * metrics["nckd"], kl,
                             rtol=1e-10)


def test_dkd_gradient_is_finite_for_a_confident_teacher():
  """A teacher with a 200-logit margin at tau = 1: p^ of its target overflows float32."""
  with jax.enable_x64(False):
    inputs = _logit_inputs(9, 4, 5).replace(labels=jnp.asarray([0, 1, 2, 3], jnp.int32))
    teacher = np.zeros((4, 5), np.float32)
    teacher[np.arange(4), np.arange(4)] = 200.0
    inputs = inputs.replace(student_logits=inputs.student_logits.astype(jnp.float32),
                            teacher_logits=jnp.asarray(teacher))
    method = DKD(temperature=1.0, warmup_epochs=0)
    gradient = jax.grad(lambda z: _loss(method, inputs.replace(student_logits=z))[0])(
        inputs.student_logits)
    assert np.all(np.isfinite(gradient))


def test_dkd_needs_steps_per_epoch_for_its_warmup():
  with pytest.raises(KdJaxError, match="steps_per_epoch"):
    DKD()
  DKD(warmup_epochs=0)  # no warm-up, no need


def _np_pearson(a, b, eps=1e-8):
  a, b = a - a.mean(), b - b.mean()
  return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def _np_dist(student, teacher, labels, temperature, beta, gamma, ce_weight, kd_weight, standardize):
  s, t = (_standardized(student), _standardized(teacher)) if standardize else (student, teacher)
  y_s, y_t = softmax(s / temperature), softmax(t / temperature)
  inter = 1 - np.mean([_np_pearson(y_s[b], y_t[b]) for b in range(len(y_s))])
  intra = 1 - np.mean([_np_pearson(y_s[:, c], y_t[:, c]) for c in range(y_s.shape[1])])
  return (ce_weight * labelled_ce(student, labels)
          + kd_weight * temperature**2 * (beta * inter + gamma * intra))


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("standardize", [False, True])
def test_dist_matches_numpy(batch, classes, standardize):
  inputs = _logit_inputs(7, batch, classes)
  method = DIST(temperature=2.0, beta=0.7, gamma=1.3, ce_weight=0.4, kd_weight=2.0,
                logit_standardization=standardize)
  teacher, labels = np.asarray(inputs.teacher_logits), np.asarray(inputs.labels)
  _check(method, inputs,
         lambda z: _np_dist(z, teacher, labels, 2.0, 0.7, 1.3, 0.4, 2.0, standardize))


def test_cross_entropy_leaves_unlabelled_rows_out():
  inputs = _logit_inputs(8, 4, 3).replace(labels=jnp.full((4,), -1, jnp.int32))
  _, _, metrics = _loss(KD(), inputs)
  assert metrics["ce"] == 0.0
  with_labels = inputs.replace(labels=jnp.asarray([0, -1, 2, -1], jnp.int32))
  expected = 0.1 * labelled_ce(np.asarray(inputs.student_logits), [0, -1, 2, -1])
  np.testing.assert_allclose(_loss(KD(), with_labels)[2]["ce"], expected, rtol=1e-10)


def test_make_method_builds_by_name_with_options():
  method = make_method({"name": "dkd", "beta": 2.0, "steps_per_epoch": 782})
  assert method == DKD(beta=2.0, steps_per_epoch=782)
  with pytest.raises(KdJaxError, match="unknown distill method 'nope'"):
    make_method({"name": "nope"})
  with pytest.raises(KdJaxError, match="no option tau"):
    make_method({"name": "kd", "tau": 2.0})
