"""Training losses: cross-entropy, the ensemble teacher, and the distillation objective.

The distillation objective is Eq. 1 of Stanton et al. (2021):

  L = alpha * NLL(labels) + (1 - alpha) * L_KD,
  L_KD = -tau^2 * sum_j softmax(z_t / tau)_j * log softmax(z_s / tau)_j,

plus the variants of L_KD that the paper's original code offered (see `KD_KINDS`). Every function is a
pure jnp function that jits, computes in float32 whatever the input dtype (logits may arrive in bf16),
and returns the mean over the batch.

The tau^2 factor keeps the size of the gradient roughly independent of tau (Hinton et al. 2015): the
gradient of the tempered cross-entropy w.r.t. z_s is (p_s^tau - p_t^tau) / tau, and p_s^tau - p_t^tau
itself shrinks like 1 / tau at high temperature.
"""

import numbers

import jax
import jax.numpy as jnp


def _log_probs(logits, temperature=1.0):
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _per_example_cross_entropy(logits, labels):
  log_probs = _log_probs(logits)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits, labels):
  """Mean over the batch of -log softmax(logits)[label]; logits (B, C), integer labels (B,)."""
  return jnp.mean(_per_example_cross_entropy(logits, labels))


def ensemble_log_probs(member_logits):
  """Log of the mean of the members' softmax probabilities: (m, B, C) -> (B, C).

  This is the ensemble teacher's "logits" in the paper. Averaging in log space with logsumexp keeps
  the tiny probabilities that a direct log(mean(softmax)) would round to log(0).
  """
  member_log_probs = _log_probs(member_logits)
  num_members = member_log_probs.shape[0]
  return jax.scipy.special.logsumexp(member_log_probs, axis=0) - jnp.log(num_members)


# Per-example L_KD for each kind. Signature: (student_logits, teacher_logits, temperature, rng) -> (B,).
# The teacher logits arrive already wrapped in stop_gradient.


def _forward_kl(student_logits, teacher_logits, temperature, rng):
  """The paper's L_KD: tau^2 * cross-entropy H(p_t^tau, p_s^tau).

  Differs from tau^2 * KL(p_t^tau || p_s^tau) only by the teacher's entropy, which is constant in the
  student, so the gradients are identical.
  """
  del rng
  teacher_probs = jnp.exp(_log_probs(teacher_logits, temperature))
  student_log_probs = _log_probs(student_logits, temperature)
  return -temperature**2 * jnp.sum(teacher_probs * student_log_probs, axis=-1)


def _reverse_kl(student_logits, teacher_logits, temperature, rng):
  """tau^2 * KL(p_s^tau || p_t^tau): mode seeking, the student may ignore some teacher modes."""
  del rng
  student_log_probs = _log_probs(student_logits, temperature)
  teacher_log_probs = _log_probs(teacher_logits, temperature)
  student_probs = jnp.exp(student_log_probs)
  return temperature**2 * jnp.sum(student_probs * (student_log_probs - teacher_log_probs), axis=-1)


def _symmetric_kl(student_logits, teacher_logits, temperature, rng):
  """tau^2 * (KL(p_t || p_s) + KL(p_s || p_t)) / 2 on the tempered distributions.

  The two KLs sum to sum_j (p_t_j - p_s_j) * (log p_t_j - log p_s_j), which needs one pass.
  """
  del rng
  student_log_probs = _log_probs(student_logits, temperature)
  teacher_log_probs = _log_probs(teacher_logits, temperature)
  prob_gap = jnp.exp(teacher_log_probs) - jnp.exp(student_log_probs)
  log_prob_gap = teacher_log_probs - student_log_probs
  return 0.5 * temperature**2 * jnp.sum(prob_gap * log_prob_gap, axis=-1)


def _brier(student_logits, teacher_logits, temperature, rng):
  """tau^2 * sum_j (p_s_j^tau - p_t_j^tau)^2: the Brier score against the teacher's soft labels.

  Scaled by tau^2 like the KL kinds: for small logit gaps the squared probability gap shrinks like
  1 / tau^2, so the factor keeps the loss (and its gradient) on a comparable scale across tau. At
  tau = 1 this is the plain multi-class Brier score (no 1/C normalization).
  """
  del rng
  student_probs = jnp.exp(_log_probs(student_logits, temperature))
  teacher_probs = jnp.exp(_log_probs(teacher_logits, temperature))
  return temperature**2 * jnp.sum((student_probs - teacher_probs) ** 2, axis=-1)


def _hard_argmax(student_logits, teacher_logits, temperature, rng):
  """Cross-entropy (tau = 1) of the student against the teacher's top-1 label.

  Temperature has no effect: argmax is invariant to it, and a one-hot target is not softened, so the
  student is scored at tau = 1 without the tau^2 factor (it is an ordinary label loss).
  """
  del temperature, rng
  teacher_labels = jnp.argmax(teacher_logits, axis=-1)
  return _per_example_cross_entropy(student_logits, teacher_labels)


def _hard_sample(student_logits, teacher_logits, temperature, rng):
  """Cross-entropy (tau = 1) of the student against a label drawn from the teacher's p_t^tau.

  The temperature only shapes the teacher's sampling distribution; the student is scored at tau = 1
  for the same reason as in `_hard_argmax`. In expectation over the draw this equals
  H(p_t^tau, p_s) at tau = 1.
  """
  teacher_log_probs = _log_probs(teacher_logits, temperature)
  teacher_labels = jax.random.categorical(rng, teacher_log_probs, axis=-1)
  return _per_example_cross_entropy(student_logits, teacher_labels)


_KD_LOSSES = {
    'forward_kl': _forward_kl,
    'reverse_kl': _reverse_kl,
    'symmetric_kl': _symmetric_kl,
    'brier': _brier,
    'hard_argmax': _hard_argmax,
    'hard_sample': _hard_sample,
}

# The valid values of `distillation_loss(kind=...)`, for config validation.
KD_KINDS = tuple(_KD_LOSSES)


def _is_static_zero(value):
  # A traced alpha is never treated as zero: both terms are computed and the weight decides.
  return isinstance(value, numbers.Real) and value == 0


def distillation_loss(student_logits, teacher_logits, labels, *, alpha, temperature,
                      kind='forward_kl', rng=None):
  """alpha * NLL(labels) + (1 - alpha) * L_KD, averaged over the batch (Eq. 1 of the paper).

  Args:
    student_logits: (B, C) student logits.
    teacher_logits: (B, C) teacher logits; any shift of them works, e.g. `ensemble_log_probs`. Treated
      as a constant: no gradient flows into the teacher.
    labels: (B,) integer ground-truth labels. Unused (may be None) when alpha is a Python 0.
    alpha: weight of the ground-truth NLL term; the paper's main experiments use 0.
    temperature: tau, shared by teacher and student.
    kind: which L_KD, one of `KD_KINDS`; 'forward_kl' is the paper's.
    rng: a PRNG key, required by kind='hard_sample' and ignored otherwise.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: unknown kind, 'hard_sample' without rng, or labels missing while alpha != 0.
  """
  if kind not in _KD_LOSSES:
    raise ValueError(f'Unknown distillation loss kind {kind!r}; valid kinds: {", ".join(KD_KINDS)}.')
  if kind == 'hard_sample' and rng is None:
    raise ValueError("kind='hard_sample' draws labels from the teacher and needs an `rng` key.")
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  kd_loss = jnp.mean(_KD_LOSSES[kind](student_logits, teacher_logits, temperature, rng))
  if _is_static_zero(alpha):
    return kd_loss
  if labels is None:
    raise ValueError(f'alpha={alpha} weights the ground-truth NLL term, so labels are required.')
  return alpha * cross_entropy(student_logits, labels) + (1.0 - alpha) * kd_loss
