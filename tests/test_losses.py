"""Tests for kd_jax.losses against independent NumPy references (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses

BATCH, CLASSES = 7, 5


def _logits(seed, shape=(BATCH, CLASSES), scale=3.0):
  return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(np.float32)


def _labels(seed):
  return np.random.default_rng(seed).integers(0, CLASSES, size=BATCH).astype(np.int32)


def _np_softmax(logits, temperature=1.0):
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _np_distillation(student, teacher, labels, alpha, tau):
  """Eq. 1 of the paper written out example by example."""
  total = 0.0
  for b in range(student.shape[0]):
    nll = -np.log(_np_softmax(student[b])[labels[b]])
    p_t = _np_softmax(teacher[b], tau)
    log_p_s = np.log(_np_softmax(student[b], tau))
    kd = -tau**2 * np.sum(p_t * log_p_s)
    total += alpha * nll + (1 - alpha) * kd
  return total / student.shape[0]


def _np_kl(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def test_cross_entropy_matches_numpy_loop():
  logits, labels = _logits(0), _labels(1)
  expected = np.mean([-np.log(_np_softmax(logits[b])[labels[b]]) for b in range(BATCH)])
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-5)


def test_cross_entropy_accepts_bf16_and_returns_float32():
  logits, labels = _logits(0), _labels(1)
  loss = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  assert loss.dtype == jnp.float32
  expected = losses.cross_entropy(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32), labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_ensemble_log_probs_matches_log_mean_softmax():
  members = _logits(2, shape=(3, BATCH, CLASSES))
  expected = np.log(np.mean(_np_softmax(members), axis=0))
  result = losses.ensemble_log_probs(members)
  assert result.shape == (BATCH, CLASSES)
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_ensemble_of_one_is_log_softmax():
  member = _logits(3)
  expected = np.log(_np_softmax(member))
  np.testing.assert_allclose(losses.ensemble_log_probs(member[None]), expected, rtol=1e-5, atol=1e-5)


def test_ensemble_log_probs_keeps_tiny_probabilities_finite():
  # A naive log(mean(softmax)) underflows to -inf here; the logsumexp form does not.
  members = np.array([[[0.0, -200.0]], [[0.0, -300.0]]], np.float32)
  result = np.asarray(losses.ensemble_log_probs(members))
  assert np.all(np.isfinite(result))
  np.testing.assert_allclose(result[0, 1], -200.0 - np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize('alpha,tau', [(0.0, 1.0), (0.0, 4.0), (0.1, 4.0), (0.5, 1.0), (0.9, 16.0),
                                       (1.0, 8.0)])
def test_distillation_loss_matches_eq1(alpha, tau):
  student, teacher, labels = _logits(4), _logits(5), _labels(6)
  expected = _np_distillation(student, teacher, labels, alpha, tau)
  result = losses.distillation_loss(student, teacher, labels, alpha=alpha, temperature=tau)
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_distillation_loss_accepts_ensemble_teacher():
  # The teacher's log-probs are logits shifted per example; softmax does not see the shift.
  student, members = _logits(7), _logits(8, shape=(5, BATCH, CLASSES))
  teacher = np.log(np.mean(_np_softmax(members), axis=0))
  expected = _np_distillation(student, teacher, _labels(0), 0.0, 4.0)
  result = losses.distillation_loss(student, losses.ensemble_log_probs(members), None, alpha=0.0,
                                    temperature=4.0)
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_alpha_zero_ignores_labels():
  student, teacher = _logits(9), _logits(10)
  garbage = np.full((BATCH,), 10**6, np.int32)
  with_none = losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=4.0)
  with_garbage = losses.distillation_loss(student, teacher, garbage, alpha=0.0, temperature=4.0)
  np.testing.assert_allclose(with_none, with_garbage)
  assert np.isfinite(with_none)


def test_nonzero_alpha_requires_labels():
  with pytest.raises(ValueError, match='labels'):
    losses.distillation_loss(_logits(0), _logits(1), None, alpha=0.5, temperature=1.0)


def test_tau1_alpha0_gradient_equals_kl_gradient_and_closed_form():
  student, teacher = _logits(11), _logits(12)

  def independent_mean_kl(z_s):
    p_t = jnp.exp(teacher - jax.scipy.special.logsumexp(teacher, axis=-1, keepdims=True))
    log_p_t = jnp.log(p_t)
    log_p_s = z_s - jax.scipy.special.logsumexp(z_s, axis=-1, keepdims=True)
    return jnp.mean(jnp.sum(p_t * (log_p_t - log_p_s), axis=-1))

  grad = jax.grad(lambda z: losses.distillation_loss(z, teacher, None, alpha=0.0, temperature=1.0))(
      student)
  np.testing.assert_allclose(grad, jax.grad(independent_mean_kl)(student), rtol=1e-5, atol=1e-7)
  closed_form = (_np_softmax(student) - _np_softmax(teacher)) / BATCH
  np.testing.assert_allclose(grad, closed_form, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('tau', [2.0, 4.0, 16.0])
def test_gradient_has_tau_squared_scaling(tau):
  student, teacher = _logits(13), _logits(14)
  grad = jax.grad(lambda z: losses.distillation_loss(z, teacher, None, alpha=0.0, temperature=tau))(
      student)
  closed_form = tau * (_np_softmax(student, tau) - _np_softmax(teacher, tau)) / BATCH
  np.testing.assert_allclose(grad, closed_form, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('kind', losses.KD_KINDS)
def test_teacher_receives_no_gradient(kind):
  student, teacher, labels = _logits(15), _logits(16), _labels(17)
  grad_teacher = jax.grad(
      lambda t: losses.distillation_loss(student, t, labels, alpha=0.3, temperature=2.0, kind=kind,
                                         rng=jax.random.key(0)))(teacher)
  np.testing.assert_array_equal(grad_teacher, np.zeros_like(teacher))


# --- Each kind against a direct float64 transcription of its formula, values and gradients -------
# The transcriptions follow the original code's formulas (gnosis/distillation/classification.py):
# torch's Categorical KL, F.mse_loss (mean over batch and classes), -(temp^2 * ...).mean().


def _np_per_example(kind, student, teacher, tau, hard_labels=None):
  """Per-example L_KD of `kind` in float64; hard_labels are the teacher labels of the hard kinds."""
  p_s, p_t = _np_softmax(student, tau), _np_softmax(teacher, tau)
  if kind == 'forward_kl':
    return -tau**2 * np.sum(p_t * np.log(p_s), axis=-1)
  if kind == 'reverse_ce':
    return tau**2 * np.sum(p_s * np.log(1.0 / p_t), axis=-1)
  if kind == 'reverse_kl':
    return tau**2 * _np_kl(p_s, p_t)
  if kind == 'symmetric_kl':
    return _np_kl(p_t, p_s) + _np_kl(p_s, p_t)
  if kind == 'symmetric_kl_tau2':
    return tau**2 * 0.5 * (_np_kl(p_t, p_s) + _np_kl(p_s, p_t))
  if kind == 'brier':
    return np.mean((p_s - p_t) ** 2, axis=-1)
  if kind == 'brier_tau2':
    return tau**2 * np.sum((p_s - p_t) ** 2, axis=-1)
  if kind in ('hard_argmax', 'hard_sample'):
    return -tau**2 * np.log(p_s[np.arange(len(hard_labels)), hard_labels])
  raise AssertionError(kind)


def _np_gradient(kind, student, teacher, tau, hard_labels=None):
  """d(batch mean of L_KD)/d(student logits), derived by hand, float64 (checked by finite differences)."""
  p_s, p_t = _np_softmax(student, tau), _np_softmax(teacher, tau)
  num_classes = student.shape[-1]
  log_ratio = np.log(p_s) - np.log(p_t)
  reverse_kl_grad = p_s * (log_ratio - _np_kl(p_s, p_t)[:, None])  # d KL(p_s||p_t) / d(z_s / tau)
  if kind == 'forward_kl':
    grad = tau * (p_s - p_t)
  elif kind == 'reverse_ce':
    cost = -np.log(p_t)
    grad = tau * p_s * (cost - np.sum(p_s * cost, axis=-1, keepdims=True))
  elif kind == 'reverse_kl':
    grad = tau * reverse_kl_grad
  elif kind == 'symmetric_kl':
    grad = ((p_s - p_t) + reverse_kl_grad) / tau
  elif kind == 'symmetric_kl_tau2':
    grad = 0.5 * tau * ((p_s - p_t) + reverse_kl_grad)
  elif kind in ('brier', 'brier_tau2'):
    gap = p_s - p_t
    grad = 2.0 / tau * p_s * (gap - np.sum(p_s * gap, axis=-1, keepdims=True))
    grad = grad / num_classes if kind == 'brier' else grad * tau**2
  else:
    grad = tau * (p_s - np.eye(num_classes)[hard_labels])
  return grad / student.shape[0]


def _teacher_labels(kind, teacher, tau, rng):
  if kind == 'hard_argmax':
    return teacher.argmax(axis=-1)
  if kind == 'hard_sample':  # the same draw as the loss makes from `rng`
    return np.asarray(jax.random.categorical(rng, jnp.asarray(teacher, jnp.float32) / tau, axis=-1))
  return None


CASES = [(kind, tau) for kind in losses.KD_KINDS for tau in (1.0, 4.0)]


@pytest.mark.parametrize('kind, tau', CASES)
def test_numpy_gradient_matches_finite_differences(kind, tau):
  """Checks the hand-derived gradients used below, independently of JAX (float64 central differences)."""
  student = _logits(40, shape=(3, CLASSES)).astype(np.float64)
  teacher = _logits(41, shape=(3, CLASSES)).astype(np.float64)
  labels = teacher.argmax(axis=-1)  # any fixed labels exercise the hard-label formula
  loss = lambda z: np.mean(_np_per_example(kind, z, teacher, tau, labels))
  numeric = np.zeros_like(student)
  eps = 1e-6
  for index in np.ndindex(student.shape):
    step = np.zeros_like(student)
    step[index] = eps
    numeric[index] = (loss(student + step) - loss(student - step)) / (2 * eps)
  np.testing.assert_allclose(_np_gradient(kind, student, teacher, tau, labels), numeric, rtol=1e-6,
                             atol=1e-9)


@pytest.mark.parametrize('kind, tau', CASES)
def test_kind_value_and_gradient_match_numpy(kind, tau):
  student, teacher, rng = _logits(18), _logits(19), jax.random.key(5)
  hard_labels = _teacher_labels(kind, teacher, tau, rng)
  loss_fn = lambda z: losses.distillation_loss(z, teacher, None, alpha=0.0, temperature=tau,
                                               kind=kind, rng=rng)
  value, grad = jax.value_and_grad(loss_fn)(student)
  assert value.dtype == jnp.float32
  expected = np.mean(_np_per_example(kind, student, teacher, tau, hard_labels))
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, _np_gradient(kind, student, teacher, tau, hard_labels),
                             rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('kind', ['symmetric_kl', 'brier', 'hard_argmax', 'reverse_ce'])
def test_original_kinds_reject_our_old_scaling(kind):
  """Guards the original's scale at tau = 4, C = 5: our former definitions differ by these factors.

  (symmetric_kl was tau^2/2 times, brier C tau^2 times the original's; hard_argmax scored the student
  at tau = 1 without tau^2; the reverse kind was the true reverse KL, without the student's entropy.)
  """
  student, teacher, tau = _logits(42), _logits(43), 4.0
  result = losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=tau, kind=kind)
  p_s, p_t = _np_softmax(student, tau), _np_softmax(teacher, tau)
  old = {'symmetric_kl': tau**2 * 0.5 * (_np_kl(p_t, p_s) + _np_kl(p_s, p_t)),
         'brier': tau**2 * np.sum((p_s - p_t) ** 2, axis=-1),
         'hard_argmax': -np.log(_np_softmax(student)[np.arange(BATCH), teacher.argmax(-1)]),
         'reverse_ce': tau**2 * _np_kl(p_s, p_t)}[kind].mean()
  assert abs(float(result) - old) > 1e-3 * abs(old)


def test_reverse_ce_is_reverse_kl_plus_student_entropy():
  student, teacher, tau = _logits(44), _logits(45), 4.0
  kwargs = dict(alpha=0.0, temperature=tau)
  p_s = _np_softmax(student, tau)
  entropy = -np.sum(p_s * np.log(p_s), axis=-1).mean()
  np.testing.assert_allclose(
      losses.distillation_loss(student, teacher, None, kind='reverse_ce', **kwargs),
      losses.distillation_loss(student, teacher, None, kind='reverse_kl', **kwargs) + tau**2 * entropy,
      rtol=1e-5)
  # At p_s = p_t the reverse KL is stationary; the reverse cross-entropy is not.
  at_teacher = lambda kind: jax.grad(lambda z: losses.distillation_loss(
      z, teacher, None, kind=kind, **kwargs))(teacher)
  np.testing.assert_allclose(at_teacher('reverse_kl'), 0.0, atol=1e-6)
  assert np.abs(at_teacher('reverse_ce')).max() > 1e-2


@pytest.mark.parametrize('kind', ['reverse_kl', 'symmetric_kl', 'symmetric_kl_tau2', 'brier',
                                  'brier_tau2'])
def test_divergence_variants_vanish_when_student_equals_teacher(kind):
  logits = _logits(20)
  result = losses.distillation_loss(logits, logits, None, alpha=0.0, temperature=4.0, kind=kind)
  np.testing.assert_allclose(result, 0.0, atol=1e-6)


def test_variant_mixes_with_label_term():
  student, teacher, labels = _logits(21), _logits(22), _labels(23)
  nll = np.mean([-np.log(_np_softmax(student[b])[labels[b]]) for b in range(BATCH)])
  expected = 0.5 * nll + 0.5 * np.mean(_np_per_example('brier', student, teacher, 4.0))
  result = losses.distillation_loss(student, teacher, labels, alpha=0.5, temperature=4.0,
                                    kind='brier')
  np.testing.assert_allclose(result, expected, rtol=1e-5)


def _hard_sample_loss(student, teacher, rng, tau=2.0):
  return losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=tau,
                                  kind='hard_sample', rng=rng)


def test_hard_sample_is_deterministic_given_rng():
  student, teacher = _logits(24), _logits(25, scale=0.5)
  first = _hard_sample_loss(student, teacher, jax.random.key(3))
  np.testing.assert_array_equal(first, _hard_sample_loss(student, teacher, jax.random.key(3)))
  draws = {float(_hard_sample_loss(student, teacher, jax.random.key(s))) for s in range(10)}
  assert len(draws) > 1  # a nearly flat teacher gives different labels for different keys


def test_hard_sample_requires_rng():
  with pytest.raises(ValueError, match='rng'):
    losses.distillation_loss(_logits(0), _logits(1), None, alpha=0.0, temperature=1.0,
                             kind='hard_sample')


def test_hard_sample_expectation_is_forward_kl():
  # Averaged over many draws y ~ p_t^tau, -tau^2 log p_s^tau(y) approaches tau^2 H(p_t^tau, p_s^tau).
  student, teacher, tau = _logits(26), _logits(27), 2.0
  keys = jax.random.split(jax.random.key(0), 4000)
  mean_loss = jnp.mean(jax.vmap(lambda k: _hard_sample_loss(student, teacher, k, tau))(keys))
  expected = losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=tau)
  np.testing.assert_allclose(mean_loss, expected, rtol=0.03)


def test_hard_sample_of_confident_teacher_equals_hard_argmax():
  student = _logits(28)
  teacher = 1000.0 * np.eye(CLASSES, dtype=np.float32)[_labels(29)]
  argmax_loss = losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=1.0,
                                         kind='hard_argmax')
  np.testing.assert_allclose(_hard_sample_loss(student, teacher, jax.random.key(1), tau=1.0),
                             argmax_loss, rtol=1e-6)


def test_invalid_kind_raises_and_lists_valid_kinds():
  with pytest.raises(ValueError, match='forward_kl') as error:
    losses.distillation_loss(_logits(0), _logits(1), None, alpha=0.0, temperature=1.0, kind='kl_div')
  assert 'kl_div' in str(error.value)
  assert losses.ORIGINAL_KD_KINDS == ('forward_kl', 'reverse_ce', 'symmetric_kl', 'brier',
                                      'hard_argmax', 'hard_sample')
  assert set(losses.KD_KINDS) == set(losses.ORIGINAL_KD_KINDS) | {'reverse_kl', 'symmetric_kl_tau2',
                                                                  'brier_tau2'}


@pytest.mark.parametrize('kind', losses.KD_KINDS)
def test_distillation_loss_jits_with_traced_alpha_and_temperature(kind):
  student, teacher, labels = _logits(30), _logits(31), _labels(32)

  @jax.jit
  def loss_fn(s, t, y, alpha, tau, rng):
    return losses.distillation_loss(s, t, y, alpha=alpha, temperature=tau, kind=kind, rng=rng)

  rng = jax.random.key(0)
  eager = losses.distillation_loss(student, teacher, labels, alpha=0.3, temperature=4.0, kind=kind,
                                   rng=rng)
  np.testing.assert_allclose(loss_fn(student, teacher, labels, 0.3, 4.0, rng), eager, rtol=1e-5)


def test_cross_entropy_and_ensemble_jit():
  logits, labels = _logits(33), _labels(34)
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(logits, labels),
                             losses.cross_entropy(logits, labels), rtol=1e-6)
  members = _logits(35, shape=(3, BATCH, CLASSES))
  np.testing.assert_allclose(jax.jit(losses.ensemble_log_probs)(members),
                             losses.ensemble_log_probs(members), rtol=1e-6)
