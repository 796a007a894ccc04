"""Evaluation metrics: generalization, teacher-student fidelity, and representation similarity.

Generalization (accuracy, NLL, ECE) scores a model against the labels; fidelity (top-1 agreement,
predictive KL) scores the student against its teacher, both at tau = 1 as in Stanton et al. (2021);
linear CKA compares the teacher's and the student's intermediate activations (the paper's Table 1).
Every jnp function jits and computes in float32; batch metrics are means over the examples given.
Metrics of a whole dataset (evaluation) come in two halves: `per_example` computes each example's
quantities on the device in float32, and `summarize` reduces them on the host in float64, because a
float32 running sum over tens of thousands of examples loses digits (ECE's per-bin sums were off by 13 %
relative on 50,000 confident examples).
"""

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import losses


def accuracy(logits, labels):
  """Fraction of examples whose top-1 prediction equals the label."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def nll(logits, labels):
  """Mean negative log-likelihood of the labels (the same quantity as the training cross-entropy)."""
  return losses.cross_entropy(logits, labels)


def _confidence_bins(confidences, num_bins):
  """Index of the (lo, hi] bin of [0, 1] that holds each confidence; 0 joins the first bin.

  Counting the inner edges strictly below a confidence compares against the edges themselves rather
  than computing ceil(conf * num_bins), whose rounding can move a value sitting on an edge.
  """
  inner_edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)[1:-1]
  return jnp.sum(confidences[:, None] > inner_edges[None, :], axis=-1)


def expected_calibration_error(logits, labels, num_bins=10):
  """ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)| over equal-width confidence bins.

  The confidence is the top softmax probability. |B_b| * |acc_b - conf_b| equals
  |sum of correctness in b - sum of confidence in b|, so empty bins need no special case.
  """
  probs = jnp.exp(losses.log_softmax(logits))
  confidences = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
  bins = _confidence_bins(confidences, num_bins)
  correct_per_bin = jax.ops.segment_sum(correct, bins, num_segments=num_bins)
  confidence_per_bin = jax.ops.segment_sum(confidences, bins, num_segments=num_bins)
  return jnp.sum(jnp.abs(correct_per_bin - confidence_per_bin)) / confidences.shape[0]


def agreement(teacher_logits, student_logits):
  """Top-1 agreement: fraction of examples where teacher and student predict the same class."""
  same = jnp.argmax(teacher_logits, axis=-1) == jnp.argmax(student_logits, axis=-1)
  return jnp.mean(same.astype(jnp.float32))


def predictive_kl(teacher_logits, student_logits):
  """Mean over examples of KL(p_t || p_s) at tau = 1.

  Classes where the teacher puts exactly zero mass contribute 0 (the 0 * log 0 = 0 convention), which
  matters when teacher "logits" are log-probabilities that underflowed to -inf.
  """
  teacher_log_probs = losses.log_softmax(teacher_logits)
  student_log_probs = losses.log_softmax(student_logits)
  teacher_probs = jnp.exp(teacher_log_probs)
  terms = jnp.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
  return jnp.mean(jnp.sum(terms, axis=-1))


def classification_metrics(logits, labels):
  """Generalization metrics of one model: {'accuracy', 'nll', 'ece'} as jnp scalars."""
  return {
      'accuracy': accuracy(logits, labels),
      'nll': nll(logits, labels),
      'ece': expected_calibration_error(logits, labels),
  }


def per_example(logits, labels, teacher_logits=None, num_bins=10):
  """Per-example float32 quantities of one model on a dataset, for `summarize`.

  Returns {'correct', 'nll', 'confidence', 'bin'} (each (..., N)), plus {'agree', 'kl'} against
  `teacher_logits` when given. Leading axes (stacked members) pass through.
  """
  log_probs = losses.log_softmax(logits)
  labels = jnp.broadcast_to(labels, log_probs.shape[:-1])
  confidence = jnp.exp(jnp.max(log_probs, axis=-1))
  values = {
      'correct': (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32),
      'nll': -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0],
      'confidence': confidence,
      'bin': _confidence_bins(confidence.reshape(-1), num_bins).reshape(confidence.shape),
  }
  if teacher_logits is not None:
    values.update(fidelity_per_example(teacher_logits, logits))
  return values


def fidelity_per_example(teacher_logits, student_logits):
  """{'agree', 'kl'}: per-example top-1 agreement (0/1) and KL(p_t || p_s) at tau = 1, float32."""
  teacher_log_probs = losses.log_softmax(teacher_logits)
  teacher_probs = jnp.exp(teacher_log_probs)
  kl_terms = jnp.where(teacher_probs > 0,
                       teacher_probs * (teacher_log_probs - losses.log_softmax(student_logits)), 0.0)
  same = jnp.argmax(teacher_logits, axis=-1) == jnp.argmax(student_logits, axis=-1)
  return {'agree': same.astype(jnp.float32), 'kl': jnp.sum(kl_terms, axis=-1)}


def summarize(values: dict, num_bins=10) -> dict:
  """Dataset means of `per_example`'s output (one model, arrays of shape (N,)), in float64.

  {'accuracy', 'nll', 'ece'} and, when present, {'agreement', 'kl'}, as Python floats. ECE is
  sum_b |sum_{i in b} correct_i - sum_{i in b} confidence_i| / N with the per-bin sums in float64.
  """
  as64 = {k: np.asarray(v, np.float64) for k, v in values.items() if k != 'bin'}
  bins = np.asarray(values['bin'], np.int64)
  count = as64['correct'].shape[-1]
  correct_per_bin = np.bincount(bins, weights=as64['correct'], minlength=num_bins)
  confidence_per_bin = np.bincount(bins, weights=as64['confidence'], minlength=num_bins)
  summary = {
      'accuracy': float(np.sum(as64['correct']) / count),
      'nll': float(np.sum(as64['nll']) / count),
      'ece': float(np.sum(np.abs(correct_per_bin - confidence_per_bin)) / count),
  }
  if 'agree' in as64:
    summary['agreement'] = float(np.sum(as64['agree']) / count)
    summary['kl'] = float(np.sum(as64['kl']) / count)
  return summary


def fidelity_metrics(teacher_logits, student_logits):
  """Student-teacher fidelity: {'agreement', 'kl'} as jnp scalars."""
  return {
      'agreement': agreement(teacher_logits, student_logits),
      'kl': predictive_kl(teacher_logits, student_logits),
  }


def _centered_unit_matrix(activations):
  """(n, ...) -> (n, features), columns centered, scaled to unit Frobenius norm.

  CKA is invariant to isotropic scaling, so normalizing first changes nothing but keeps the squared
  Gram entries far from float32 overflow for large activations.
  """
  flat = activations.reshape(activations.shape[0], -1).astype(jnp.float32)
  centered = flat - jnp.mean(flat, axis=0, keepdims=True)
  return centered / jnp.linalg.norm(centered)


def _dot(a, b):
  # Full float32 matmuls: the default precision on accelerators (bf16 passes / TF32) visibly biases CKA.
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def linear_cka(x, y):
  """Linear CKA (Kornblith et al. 2019) between activations x (n, ...) and y (n, ...).

  CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centered X, Y. The same value comes from
  the (n, n) Gram matrices, <X X^T, Y Y^T>_F / (||X X^T||_F ||Y Y^T||_F). The feature form costs about
  n (p + q)^2 multiply-adds and the Gram form n^2 (p + q) for p and q features, so the Gram form is
  used exactly when n < p + q (shapes are static, so the choice is made at trace time).
  Undefined (NaN) when either centered matrix is all zeros, e.g. a constant activation.
  """
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'linear_cka needs the same number of examples, got {x.shape[0]} and {y.shape[0]}.')
  x = _centered_unit_matrix(x)
  y = _centered_unit_matrix(y)
  num_examples, num_x_features, num_y_features = x.shape[0], x.shape[1], y.shape[1]
  if num_examples < num_x_features + num_y_features:
    gram_x = _dot(x, x.T)
    gram_y = _dot(y, y.T)
    cross = jnp.sum(gram_x * gram_y)
    return cross / (jnp.linalg.norm(gram_x) * jnp.linalg.norm(gram_y))
  cross = jnp.sum(_dot(y.T, x) ** 2)
  return cross / (jnp.linalg.norm(_dot(x.T, x)) * jnp.linalg.norm(_dot(y.T, y)))
