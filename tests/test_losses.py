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


@pytest.mark.parametrize('kind', ['forward_kl', 'reverse_kl', 'symmetric_kl', 'brier', 'hard_argmax',
                                  'hard_sample'])
def test_teacher_receives_no_gradient(kind):
  student, teacher, labels = _logits(15), _logits(16), _labels(17)
  grad_teacher = jax.grad(
      lambda t: losses.distillation_loss(student, t, labels, alpha=0.3, temperature=2.0, kind=kind,
                                         rng=jax.random.key(0)))(teacher)
  np.testing.assert_array_equal(grad_teacher, np.zeros_like(teacher))


def _np_variant(kind, student, teacher, tau):
  """Per-batch mean of each L_KD variant, written independently in float64."""
  p_s, p_t = _np_softmax(student, tau), _np_softmax(teacher, tau)
  if kind == 'forward_kl':
    per_example = -tau**2 * np.sum(p_t * np.log(p_s), axis=-1)
  elif kind == 'reverse_kl':
    per_example = tau**2 * _np_kl(p_s, p_t)
  elif kind == 'symmetric_kl':
    per_example = tau**2 * 0.5 * (_np_kl(p_t, p_s) + _np_kl(p_s, p_t))
  elif kind == 'brier':
    per_example = tau**2 * np.sum((p_s - p_t) ** 2, axis=-1)
  elif kind == 'hard_argmax':
    hard = teacher.argmax(axis=-1)
    per_example = -np.log(_np_softmax(student)[np.arange(len(hard)), hard])
  return per_example.mean()


@pytest.mark.parametrize('kind', ['forward_kl', 'reverse_kl', 'symmetric_kl', 'brier', 'hard_argmax'])
@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_variant_matches_numpy(kind, tau):
  student, teacher = _logits(18), _logits(19)
  expected = _np_variant(kind, student, teacher, tau)
  result = losses.distillation_loss(student, teacher, None, alpha=0.0, temperature=tau, kind=kind)
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kind', ['reverse_kl', 'symmetric_kl', 'brier'])
def test_divergence_variants_vanish_when_student_equals_teacher(kind):
  logits = _logits(20)
  result = losses.distillation_loss(logits, logits, None, alpha=0.0, temperature=4.0, kind=kind)
  np.testing.assert_allclose(result, 0.0, atol=1e-6)


def test_variant_mixes_with_label_term():
  student, teacher, labels = _logits(21), _logits(22), _labels(23)
  nll = np.mean([-np.log(_np_softmax(student[b])[labels[b]]) for b in range(BATCH)])
  expected = 0.25 * nll + 0.75 * _np_variant('reverse_kl', student, teacher, 4.0)
  result = losses.distillation_loss(student, teacher, labels, alpha=0.25, temperature=4.0,
                                    kind='reverse_kl')
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


def test_hard_sample_expectation_is_tempered_teacher_cross_entropy():
  # Averaged over many draws, the loss approaches H(p_t^tau, p_s) with the student at tau = 1.
  student, teacher, tau = _logits(26), _logits(27), 2.0
  keys = jax.random.split(jax.random.key(0), 4000)
  mean_loss = jnp.mean(jax.vmap(lambda k: _hard_sample_loss(student, teacher, k, tau))(keys))
  expected = np.mean(-np.sum(_np_softmax(teacher, tau) * np.log(_np_softmax(student)), axis=-1))
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
  assert set(losses.KD_KINDS) == {'forward_kl', 'reverse_kl', 'symmetric_kl', 'brier', 'hard_argmax',
                                  'hard_sample'}


@pytest.mark.parametrize('kind', ['forward_kl', 'reverse_kl', 'symmetric_kl', 'brier', 'hard_argmax',
                                  'hard_sample'])
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
