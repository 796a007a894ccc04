"""Tests for kd_jax.metrics against independent NumPy references (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import metrics


def _logits(seed, shape=(64, 10), scale=2.0):
  return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(np.float32)


def _labels(seed, size=64, classes=10):
  return np.random.default_rng(seed).integers(0, classes, size=size).astype(np.int32)


def _np_softmax(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _np_ece(logits, labels, num_bins):
  """ECE by looping over (lo, hi] bins; confidence 0 belongs to the first bin."""
  probs = _np_softmax(logits)
  confidences = probs.max(axis=-1)
  correct = probs.argmax(axis=-1) == labels
  ece = 0.0
  for b in range(num_bins):
    lo, hi = b / num_bins, (b + 1) / num_bins
    in_bin = (confidences > lo) & (confidences <= hi)
    if b == 0:
      in_bin |= confidences == 0.0
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidences[in_bin].mean())
  return ece


def _np_kl(teacher_logits, student_logits):
  p_t, p_s = _np_softmax(teacher_logits), _np_softmax(student_logits)
  return np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))


def _np_linear_cka(x, y):
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  y = np.asarray(y, np.float64).reshape(y.shape[0], -1)
  x = x - x.mean(axis=0)
  y = y - y.mean(axis=0)
  return (np.linalg.norm(y.T @ x) ** 2
          / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _two_class_logits(confidences, predicted):
  """Logits of a 2-class model that puts `confidence` on class `predicted`."""
  rows = []
  for confidence, cls in zip(confidences, predicted):
    probs = [confidence, 1.0 - confidence] if cls == 0 else [1.0 - confidence, confidence]
    rows.append(np.log(probs))
  return np.asarray(rows, np.float32)


# --- generalization -----------------------------------------------------------------------------


def test_accuracy_matches_numpy():
  logits, labels = _logits(0), _labels(1)
  np.testing.assert_allclose(metrics.accuracy(logits, labels),
                             np.mean(logits.argmax(axis=-1) == labels), rtol=1e-6)


def test_nll_matches_numpy():
  logits, labels = _logits(2), _labels(3)
  expected = -np.mean(np.log(_np_softmax(logits)[np.arange(len(labels)), labels]))
  np.testing.assert_allclose(metrics.nll(logits, labels), expected, rtol=1e-5)


def test_ece_hand_computed_case():
  # Bins of width 0.1. Confidences and the bins they land in:
  #   0.95 correct, 0.92 wrong, 1.0 wrong (exact 1.0 -> last bin)  -> bin 9: |1 - 2.87| = 1.87
  #   0.65 correct                                                -> bin 6: |1 - 0.65| = 0.35
  #   0.55 wrong                                                  -> bin 5: |0 - 0.55| = 0.55
  #   0.5 correct (sits on an edge; (lo, hi] puts it in bin 4)    -> bin 4: |1 - 0.5|  = 0.50
  # ECE = (1.87 + 0.35 + 0.55 + 0.50) / 6.
  logits = _two_class_logits([0.95, 0.92, 0.65, 0.55, 0.5], [0, 0, 0, 0, 0])
  logits = np.concatenate([logits, np.array([[100.0, 0.0]], np.float32)])
  labels = np.array([0, 1, 0, 1, 0, 1], np.int32)
  assert float(jnp.max(jax.nn.softmax(logits[-1]))) == 1.0  # the edge case really is exactly 1.0
  expected = (1.87 + 0.35 + 0.55 + 0.50) / 6
  np.testing.assert_allclose(metrics.expected_calibration_error(logits, labels), expected, atol=1e-6)
  np.testing.assert_allclose(_np_ece(logits, labels, 10), expected, atol=1e-6)


def test_confidence_bins_are_left_open_right_closed():
  confidences = jnp.array([0.0, 0.25, 0.2500001, 0.5, 0.74, 0.75, 1.0], jnp.float32)
  np.testing.assert_array_equal(metrics._confidence_bins(confidences, 4), [0, 0, 1, 1, 2, 2, 3])


@pytest.mark.parametrize('seed,scale,num_bins', [(4, 0.5, 10), (5, 2.0, 10), (6, 5.0, 15), (7, 1.0, 3)])
def test_ece_random_matches_numpy_loop(seed, scale, num_bins):
  logits, labels = _logits(seed, shape=(500, 10), scale=scale), _labels(seed + 100, size=500)
  # A few rows whose confidence is exactly 1.0, half of them wrong.
  logits[:6] = 0.0
  logits[:6, 0] = 200.0
  labels[:3] = 0
  labels[3:6] = 1
  result = metrics.expected_calibration_error(logits, labels, num_bins=num_bins)
  np.testing.assert_allclose(result, _np_ece(logits, labels, num_bins), atol=1e-5)


def test_ece_of_perfectly_calibrated_bins_is_zero():
  # Four examples at confidence 0.75 of which three are right: the bin's accuracy equals its confidence.
  logits = _two_class_logits([0.75] * 4, [0] * 4)
  labels = np.array([0, 0, 0, 1], np.int32)
  np.testing.assert_allclose(metrics.expected_calibration_error(logits, labels), 0.0, atol=1e-6)


def test_classification_metrics_keys_and_values():
  logits, labels = _logits(8), _labels(9)
  result = metrics.classification_metrics(logits, labels)
  assert set(result) == {'accuracy', 'nll', 'ece'}
  np.testing.assert_allclose(result['accuracy'], np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  np.testing.assert_allclose(result['ece'], _np_ece(logits, labels, 10), atol=1e-5)
  assert all(isinstance(float(value), float) for value in result.values())


# --- fidelity -----------------------------------------------------------------------------------


def test_agreement_matches_numpy():
  teacher, student = _logits(10), _logits(11)
  expected = np.mean(teacher.argmax(-1) == student.argmax(-1))
  np.testing.assert_allclose(metrics.agreement(teacher, student), expected, rtol=1e-6)
  np.testing.assert_allclose(metrics.agreement(teacher, teacher), 1.0)


def test_predictive_kl_matches_numpy():
  teacher, student = _logits(12), _logits(13)
  np.testing.assert_allclose(metrics.predictive_kl(teacher, student), _np_kl(teacher, student),
                             rtol=1e-5)


def test_predictive_kl_of_identical_distributions_is_zero():
  logits = _logits(14)
  np.testing.assert_allclose(metrics.predictive_kl(logits, logits), 0.0, atol=1e-6)
  # Shifting logits per example leaves the distribution, and so the KL, unchanged.
  shifted = logits + np.arange(len(logits), dtype=np.float32)[:, None]
  np.testing.assert_allclose(metrics.predictive_kl(logits, shifted), 0.0, atol=1e-5)


def test_predictive_kl_with_zero_teacher_mass_is_finite():
  teacher = np.array([[0.0, -np.inf, 0.0]], np.float32)
  student = np.array([[1.0, 0.0, 1.0]], np.float32)
  p_s = _np_softmax(student)[0]
  expected = 0.5 * (np.log(0.5) - np.log(p_s[0])) * 2
  np.testing.assert_allclose(metrics.predictive_kl(teacher, student), expected, rtol=1e-5)


def test_fidelity_metrics_keys_and_values():
  teacher, student = _logits(15), _logits(16)
  result = metrics.fidelity_metrics(teacher, student)
  assert set(result) == {'agreement', 'kl'}
  np.testing.assert_allclose(result['agreement'], np.mean(teacher.argmax(-1) == student.argmax(-1)))
  np.testing.assert_allclose(result['kl'], _np_kl(teacher, student), rtol=1e-5)


# --- representation similarity ------------------------------------------------------------------


def _activations(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _correlated_pair(seed, n, p, q):
  x = _activations(seed, (n, p))
  mixing = _activations(seed + 1, (p, q))
  y = x @ mixing + 0.5 * _activations(seed + 2, (n, q)) + 3.0  # the offset checks the centering
  return x, y


@pytest.mark.parametrize('n,p,q', [(200, 6, 9), (20, 30, 40), (50, 25, 25)])
def test_linear_cka_matches_numpy_in_both_forms(n, p, q):
  # (200, 6, 9) takes the feature form, the others the Gram form (n < p + q).
  x, y = _correlated_pair(17, n, p, q)
  np.testing.assert_allclose(metrics.linear_cka(x, y), _np_linear_cka(x, y), rtol=1e-4)


def test_linear_cka_flattens_feature_maps():
  x = _activations(18, (32, 4, 4, 3))
  y = x[..., :2].reshape(32, -1) + 0.1 * _activations(19, (32, 32))
  np.testing.assert_allclose(metrics.linear_cka(x, y), _np_linear_cka(x, y), rtol=1e-4)


@pytest.mark.parametrize('n,p', [(100, 10), (12, 30)])
def test_linear_cka_of_matrix_with_itself_is_one(n, p):
  x = _activations(20, (n, p))
  np.testing.assert_allclose(metrics.linear_cka(x, x), 1.0, rtol=1e-5)


@pytest.mark.parametrize('n,p,q', [(150, 8, 12), (16, 20, 12)])
def test_linear_cka_invariant_to_orthogonal_transform_and_scaling(n, p, q):
  x, y = _correlated_pair(21, n, p, q)
  orthogonal, _ = np.linalg.qr(_activations(22, (q, q)).astype(np.float64))
  reference = metrics.linear_cka(x, y)
  rotated = (y.astype(np.float64) @ orthogonal).astype(np.float32)
  np.testing.assert_allclose(metrics.linear_cka(x, rotated), reference, rtol=1e-4)
  np.testing.assert_allclose(metrics.linear_cka(x, 37.5 * y), reference, rtol=1e-5)
  np.testing.assert_allclose(metrics.linear_cka(1e-3 * x, y), reference, rtol=1e-5)


def test_linear_cka_of_independent_matrices_is_small():
  # For independent isotropic features the expected CKA is about sqrt(p q) / n = 0.004 here.
  x, y = _activations(23, (2000, 8)), _activations(24, (2000, 8))
  assert float(metrics.linear_cka(x, y)) < 0.02
  assert float(metrics.linear_cka(x, y)) == pytest.approx(_np_linear_cka(x, y), rel=1e-3)


def test_linear_cka_rejects_different_example_counts():
  with pytest.raises(ValueError, match='same number of examples'):
    metrics.linear_cka(_activations(0, (10, 3)), _activations(1, (11, 3)))


# --- jit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('fn', [metrics.accuracy, metrics.nll, metrics.expected_calibration_error,
                                metrics.agreement, metrics.predictive_kl])
def test_pairwise_metrics_jit(fn):
  logits, second = _logits(25), _logits(26)
  labels = _labels(27)
  other = labels if fn in (metrics.accuracy, metrics.nll, metrics.expected_calibration_error) else second
  np.testing.assert_allclose(jax.jit(fn)(logits, other), fn(logits, other), rtol=1e-6)


def test_ece_jits_with_static_num_bins():
  logits, labels = _logits(28), _labels(29)
  ece = jax.jit(metrics.expected_calibration_error, static_argnames='num_bins')
  np.testing.assert_allclose(ece(logits, labels, num_bins=15),
                             metrics.expected_calibration_error(logits, labels, num_bins=15), rtol=1e-6)


def test_metric_dicts_jit():
  logits, teacher, labels = _logits(30), _logits(31), _labels(32)
  jitted = jax.jit(metrics.classification_metrics)(logits, labels)
  eager = metrics.classification_metrics(logits, labels)
  for key in eager:
    np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-6)
  jitted = jax.jit(metrics.fidelity_metrics)(teacher, logits)
  eager = metrics.fidelity_metrics(teacher, logits)
  for key in eager:
    np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-6)


@pytest.mark.parametrize('n,p,q', [(200, 6, 9), (20, 30, 40)])
def test_linear_cka_jit(n, p, q):
  x, y = _correlated_pair(33, n, p, q)
  np.testing.assert_allclose(jax.jit(metrics.linear_cka)(x, y), metrics.linear_cka(x, y), rtol=1e-5)


def test_metrics_accept_bf16_logits():
  logits, labels = _logits(34), _labels(35)
  as_bf16 = jnp.asarray(logits, jnp.bfloat16)
  upcast = np.asarray(as_bf16, np.float32)
  for fn in (metrics.nll, metrics.expected_calibration_error):
    value = fn(as_bf16, labels)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, fn(upcast, labels), rtol=1e-6)


# Whole-dataset metrics: per-example values on the device, float64 means on the host.


def _np_dataset_metrics(logits, labels, teacher_logits, num_bins=10):
  """Float64 reference computed from the logits alone."""
  probs = _np_softmax(logits)
  confidences = probs.max(axis=-1)
  correct = probs.argmax(axis=-1) == labels
  ece = 0.0
  for b in range(num_bins):
    in_bin = (confidences > b / num_bins) & (confidences <= (b + 1) / num_bins)
    ece += abs(np.sum(correct[in_bin]) - np.sum(confidences[in_bin]))
  return {'accuracy': correct.mean(), 'nll': -np.mean(np.log(probs[np.arange(len(labels)), labels])),
          'ece': ece / len(labels),
          'agreement': np.mean(_np_softmax(teacher_logits).argmax(-1) == probs.argmax(-1)),
          'kl': _np_kl(teacher_logits, logits)}


def test_summarize_matches_a_float64_reference():
  logits, labels, teacher = _logits(30, (2000, 10)), _labels(31, 2000), _logits(32, (2000, 10))
  values = jax.device_get(metrics.per_example(logits, labels, teacher_logits=teacher))
  summary = metrics.summarize(values)
  expected = _np_dataset_metrics(logits, labels, teacher)
  assert summary.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(summary[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_dataset_ece_is_exact_on_50000_confident_examples():
  """The float32 per-bin sums of the batch ECE drift by about 1e-4 here; the float64 ones do not."""
  rng = np.random.default_rng(33)
  n = 50000
  logits = np.zeros((n, 10), np.float32)
  logits[:, 0] = rng.uniform(8.0, 12.0, n).astype(np.float32)  # confidence about 0.997-0.99995
  labels = np.where(rng.uniform(size=n) < 0.999, 0, 1).astype(np.int32)
  expected = _np_dataset_metrics(logits, labels, logits)['ece']
  summary = metrics.summarize(jax.device_get(metrics.per_example(logits, labels)))
  float32_error = abs(float(metrics.expected_calibration_error(logits, labels)) - expected)
  assert abs(summary['ece'] - expected) < 1e-8 < float32_error / 100


def test_per_example_broadcasts_labels_over_stacked_members():
  member_logits = np.stack([_logits(40), _logits(41)])
  labels = _labels(42)
  stacked = metrics.per_example(member_logits, labels)
  for i in range(2):
    single = metrics.per_example(member_logits[i], labels)
    for key in single:
      np.testing.assert_array_equal(stacked[key][i], single[key])
