"""DIST: Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (NeurIPS).

DIST matches relations instead of the probabilities themselves. With Y = softmax(z / tau) as a
(B, C) matrix for student and teacher, and the Pearson correlation
rho(u, v) = <u - mean(u), v - mean(v)> / (||u - mean(u)|| ||v - mean(v)|| + 1e-8),

  inter = 1 - (1/B) sum_b rho(Y_s[b, :], Y_t[b, :])    (each example's class ranking),
  intra = 1 - (1/C) sum_c rho(Y_s[:, c], Y_t[:, c])    (each class's profile over the batch),
  L = w_ce * CE(z_s, y) + w_kd * tau^2 * (beta * inter + gamma * intra).

rho is invariant to a shift and a positive scale of each argument, so inter asks only that the
student's probabilities of a row be an affine image of the teacher's. intra couples the rows of the
batch: it is computed over the batch the loss sees (under data parallelism, the global batch). Under
logit standardization both logit rows are z-scored before the temperature, as for KD.

Source: hunto/DIST_KD (its classification code, hunto/image_classification_sota,
lib/models/losses/dist_kd.py and lib/models/losses/kd_loss.py); CIFAR-100 defaults
(configs/strategies/distill/dist_cifar.yaml: kd 'dist_t4', ori_loss_weight 1, kd_loss_weight 2):
temperature 4, beta 1, gamma 1, CE weight 1, KD weight 2 (the tau^2 factor is the reference's
DIST class's).

Teacher ensembles: the loss reads only teacher_logits, so the ensemble's log-mean-probability logits
serve as they are.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.kd import tempered_logits


def pearson_rows(a, b, eps=1e-8):
  """Pearson correlation of the matching rows of a and b (B, C) -> (B,), DIST's rule with eps."""
  a = a - jnp.mean(a, axis=1, keepdims=True)
  b = b - jnp.mean(b, axis=1, keepdims=True)
  norms = common.vector_norm(a, axis=1, keepdims=False) * common.vector_norm(b, axis=1,
                                                                                keepdims=False)
  return jnp.sum(a * b, axis=1) / (norms + eps)


@dataclasses.dataclass(frozen=True)
class DIST:
  """DIST's inter- and intra-class relation loss with its CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "dist"
  uses_features: ClassVar[bool] = False
  feature_kind: ClassVar[str] = ""

  temperature: float = 4.0
  beta: float = 1.0
  gamma: float = 1.0
  ce_weight: float = 1.0
  kd_weight: float = 2.0
  logit_standardization: bool = False

  from_config = classmethod(common.method_from_config)

  init = common.no_parameters

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = tempered_logits(inputs.student_logits, inputs.teacher_logits,
                                       self.logit_standardization)
    student_probs = jax.nn.softmax(student / self.temperature, axis=-1)
    teacher_probs = jax.nn.softmax(teacher / self.temperature, axis=-1)
    inter = 1.0 - jnp.mean(pearson_rows(student_probs, teacher_probs))
    intra = 1.0 - jnp.mean(pearson_rows(student_probs.T, teacher_probs.T))
    distill = self.kd_weight * self.temperature**2 * (self.beta * inter + self.gamma * intra)
    return common.with_cross_entropy(self.ce_weight, inputs, distill, state, inter=inter,
                                     intra=intra)
