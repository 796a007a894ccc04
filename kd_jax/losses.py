"""Training losses: cross-entropy, the ensemble teacher, and the distillation objective.

The distillation objective is Eq. 1 of Stanton et al. (2021):

  L = alpha * NLL(labels) + (1 - alpha) * L_KD,
  L_KD = -tau^2 * sum_j softmax(z_t / tau)_j * log softmax(z_s / tau)_j,

plus the variants of L_KD that the paper's original code offered, with its exact scaling, and three of
our own (see `KD_KINDS` and the comment above `_forward_kl`). Every function is a
pure jnp function that jits, computes in float32 whatever the input dtype (logits may arrive in bf16),
and returns the mean over the batch.

The tau^2 factor keeps the size of the gradient roughly independent of tau (Hinton et al. 2015): the
gradient of the tempered cross-entropy w.r.t. z_s is (p_s^tau - p_t^tau) / tau, and p_s^tau - p_t^tau
itself shrinks like 1 / tau at high temperature.
"""

import numbers

import jax
import jax.numpy as jnp


def log_softmax(logits, temperature=1.0):
  """log softmax(logits / temperature) in float32, whatever the logits' dtype (bf16 under mixed
  precision); losses and metrics (kd_jax/metrics.py) share it."""
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _per_example_cross_entropy(logits, labels):
  log_probs = log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits, labels):
  """Mean over the batch of -log softmax(logits)[label]; logits (B, C), integer labels (B,)."""
  return jnp.mean(_per_example_cross_entropy(logits, labels))


def ensemble_log_probs(member_logits):
  """Log of the mean of the members' softmax probabilities: (m, B, C) -> (B, C).

  This is the ensemble teacher's "logits" in the paper. Averaging in log space with logsumexp keeps
  the tiny probabilities that a direct log(mean(softmax)) would round to log(0).
  """
  member_log_probs = log_softmax(member_logits)
  num_members = member_log_probs.shape[0]
  return jax.scipy.special.logsumexp(member_log_probs, axis=0) - jnp.log(num_members)


# Per-example L_KD for each kind. Signature: (student_logits, teacher_logits, temperature, rng) -> (B,).
# The teacher logits arrive already wrapped in stop_gradient. Notation: p_s = softmax(z_s / tau),
# p_t = softmax(z_t / tau), C classes; a gradient "d/dz_s" is per example, before the batch mean.
#
# The kinds of the paper's original code (samuelstanton/gnosis, gnosis/distillation/classification.py)
# keep its scaling exactly, so configs/paper/loss_variants.py reproduces its runs: forward_kl,
# reverse_ce, symmetric_kl, brier, hard_argmax, hard_sample. The kinds reverse_kl, symmetric_kl_tau2 and
# brier_tau2 are ours (not in the original): the same divergences put on the tau^2 scale of forward_kl.


def _forward_kl(student_logits, teacher_logits, temperature, rng):
  """The paper's L_KD (Eq. 1; the original's TeacherStudentFwdCrossEntLoss): tau^2 * H(p_t, p_s).

  L = -tau^2 * sum_j p_t_j * log p_s_j. It differs from tau^2 * KL(p_t || p_s) only by the teacher's
  entropy, which is constant in the student, so the gradients are identical:
  d/dz_s L = tau * (p_s - p_t).
  """
  del rng
  teacher_probs = jnp.exp(log_softmax(teacher_logits, temperature))
  student_log_probs = log_softmax(student_logits, temperature)
  return -temperature**2 * jnp.sum(teacher_probs * student_log_probs, axis=-1)


def _reverse_ce(student_logits, teacher_logits, temperature, rng):
  """The original's "reverse" loss (TeacherStudentRevCrossEntLoss): tau^2 * H(p_s, p_t).

  L = tau^2 * sum_j p_s_j * log(1 / p_t_j) = tau^2 * (KL(p_s || p_t) + H(p_s)).
  Unlike in forward_kl, the extra entropy term depends on the student, so the gradient is not that of
  the reverse KL: with c_j = -log p_t_j,
    d/dz_s L = tau * p_s * (c - <p_s, c>),
  which is not zero at p_s = p_t (for a non-uniform teacher it vanishes only in the limit where p_s
  concentrates on the teacher's most probable classes): minimizing it pulls the student towards the
  teacher's mode, below the teacher's entropy.
  """
  del rng
  student_probs = jnp.exp(log_softmax(student_logits, temperature))
  teacher_log_probs = log_softmax(teacher_logits, temperature)
  return -temperature**2 * jnp.sum(student_probs * teacher_log_probs, axis=-1)


def _reverse_kl(student_logits, teacher_logits, temperature, rng):
  """Ours, not the original's: the true reverse KL, tau^2 * KL(p_s || p_t).

  L = tau^2 * sum_j p_s_j * (log p_s_j - log p_t_j): mode seeking, zero iff p_s = p_t. Gradient
  d/dz_s L = tau * p_s * (log p_s - log p_t - KL(p_s || p_t)). It is reverse_ce minus
  tau^2 * H(p_s), so the student is not pushed below the teacher's entropy.
  """
  del rng
  student_log_probs = log_softmax(student_logits, temperature)
  teacher_log_probs = log_softmax(teacher_logits, temperature)
  student_probs = jnp.exp(student_log_probs)
  return temperature**2 * jnp.sum(student_probs * (student_log_probs - teacher_log_probs), axis=-1)


def _kl_sum(student_logits, teacher_logits, temperature):
  """KL(p_t || p_s) + KL(p_s || p_t) = sum_j (p_t_j - p_s_j) * (log p_t_j - log p_s_j), in one pass."""
  student_log_probs = log_softmax(student_logits, temperature)
  teacher_log_probs = log_softmax(teacher_logits, temperature)
  prob_gap = jnp.exp(teacher_log_probs) - jnp.exp(student_log_probs)
  log_prob_gap = teacher_log_probs - student_log_probs
  return jnp.sum(prob_gap * log_prob_gap, axis=-1)


def _symmetric_kl(student_logits, teacher_logits, temperature, rng):
  """The original's SymmetrizedKLLoss: KL(p_t || p_s) + KL(p_s || p_t) on the tempered distributions.

  No tau^2 factor and no 1/2: the original sums the two batch-mean KLs as they are. Gradient
  d/dz_s L = ((p_s - p_t) + p_s * (log p_s - log p_t - KL(p_s || p_t))) / tau, which shrinks like
  1 / tau^2 at high temperature (next to the label term when alpha > 0).
  """
  del rng
  return _kl_sum(student_logits, teacher_logits, temperature)


def _symmetric_kl_tau2(student_logits, teacher_logits, temperature, rng):
  """Ours, not the original's: tau^2 * (KL(p_t || p_s) + KL(p_s || p_t)) / 2.

  The mean of the forward and reverse KL on the tau^2 scale of forward_kl, so its gradient stays
  comparable across tau and next to the label term: tau^2 / 2 times symmetric_kl.
  """
  del rng
  return 0.5 * temperature**2 * _kl_sum(student_logits, teacher_logits, temperature)


def _squared_prob_gap(student_logits, teacher_logits, temperature):
  student_probs = jnp.exp(log_softmax(student_logits, temperature))
  teacher_probs = jnp.exp(log_softmax(teacher_logits, temperature))
  return jnp.sum((student_probs - teacher_probs) ** 2, axis=-1)


def _brier(student_logits, teacher_logits, temperature, rng):
  """The original's BrierLoss: (1 / C) * sum_j (p_s_j - p_t_j)^2, i.e. F.mse_loss of the probabilities.

  Averaged over the classes as well as the batch, no tau^2 factor. Gradient
  d/dz_s L = (2 / (C * tau)) * p_s * ((p_s - p_t) - <p_s, p_s - p_t>). At C = 100 and tau = 4 this term
  is tiny next to the label NLL of the alpha = 0.5 runs, as it was in the original.
  """
  del rng
  num_classes = student_logits.shape[-1]
  return _squared_prob_gap(student_logits, teacher_logits, temperature) / num_classes


def _brier_tau2(student_logits, teacher_logits, temperature, rng):
  """Ours, not the original's: tau^2 * sum_j (p_s_j - p_t_j)^2 (C * tau^2 times brier).

  Summed over classes (the plain multi-class Brier score at tau = 1) and scaled by tau^2 like
  forward_kl: for small logit gaps the squared probability gap shrinks like 1 / tau^2.
  """
  del rng
  return temperature**2 * _squared_prob_gap(student_logits, teacher_logits, temperature)


def _tempered_nll(student_logits, labels, temperature):
  """-tau^2 * log softmax(z_s / tau)[label]; gradient d/dz_s = tau * (p_s - onehot(label))."""
  log_probs = log_softmax(student_logits, temperature)
  return -temperature**2 * jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _hard_argmax(student_logits, teacher_logits, temperature, rng):
  """The original's TeacherStudentHardCrossEntLoss(mode='argmax'): tempered NLL of the teacher's top-1.

  L = -tau^2 * log softmax(z_s / tau)_y with y = argmax_j z_t_j (argmax does not depend on tau). The
  student is scored at the temperature, with the tau^2 factor, like the soft kinds; at tau = 1 this is
  the ordinary cross-entropy against the teacher's label.
  """
  del rng
  teacher_labels = jnp.argmax(teacher_logits, axis=-1)
  return _tempered_nll(student_logits, teacher_labels, temperature)


def _hard_sample(student_logits, teacher_logits, temperature, rng):
  """The original's TeacherStudentHardCrossEntLoss(mode='sample'): tempered NLL of a sampled label.

  L = -tau^2 * log softmax(z_s / tau)_y with y ~ Categorical(p_t) drawn per example from `rng`. In
  expectation over the draw it equals forward_kl, tau^2 * H(p_t, p_s), and so has the same expected
  gradient.
  """
  teacher_log_probs = log_softmax(teacher_logits, temperature)
  teacher_labels = jax.random.categorical(rng, teacher_log_probs, axis=-1)
  return _tempered_nll(student_logits, teacher_labels, temperature)


# The kinds of the paper's original code, with its scaling (configs/paper/loss_variants.py uses these).
_ORIGINAL_KD_LOSSES = {
    'forward_kl': _forward_kl,
    'reverse_ce': _reverse_ce,
    'symmetric_kl': _symmetric_kl,
    'brier': _brier,
    'hard_argmax': _hard_argmax,
    'hard_sample': _hard_sample,
}
# Ours, not in the original: the divergences on the tau^2 scale of forward_kl.
_OUR_KD_LOSSES = {
    'reverse_kl': _reverse_kl,
    'symmetric_kl_tau2': _symmetric_kl_tau2,
    'brier_tau2': _brier_tau2,
}
_KD_LOSSES = {**_ORIGINAL_KD_LOSSES, **_OUR_KD_LOSSES}

# The valid values of `distillation_loss(kind=...)`: config.KD_LOSSES, in its order (tested).
KD_KINDS = tuple(_KD_LOSSES)
# The kinds that reproduce the paper's original code exactly.
ORIGINAL_KD_KINDS = tuple(_ORIGINAL_KD_LOSSES)


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
    kind: which L_KD, one of `KD_KINDS`; 'forward_kl' is the paper's Eq. 1.
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
