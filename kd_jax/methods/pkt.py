"""PKT: Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer"
(ECCV).

PKT matches the conditional distributions that the cosine similarity of the pooled features induces
over the batch. With f^ = f / (||f|| + eps) per row,

  K_ij = (f^_i . f^_j + 1) / 2 in [0, 1],   P_ij = K_ij / sum_k K_ik   (for student and teacher),
  L = w_ce * CE(z_s, y) + w_feat * (1/B^2) sum_{i,j} P^t_ij log((P^t_ij + eps) / (P^s_ij + eps)),

a KL divergence of the teacher's rows from the student's, averaged over all B^2 entries (the
reference's torch.mean), eps = 1e-7. The loss couples the rows of the batch the loss sees.

Source: megvii-research/mdistiller, mdistiller/distillers/PKT.py (and RepDistiller,
distiller_zoo/PKT.py, from the authors' passalis/probabilistic_kt); CIFAR-100 defaults
(mdistiller/engine/cfg.py, CFG.PKT): CE weight 1, feature weight 30000 (RepDistiller -b 30000).

Features: the pooled (B, D) features that end student_features and teacher_features (D may differ).
No params, no state. Teacher ensembles would need the members' pooled features stacked (m, B, D) and
a rule to combine them (e.g. the mean of the members' KLs); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.methods import common


def pooled_pair(method_name, inputs):
  """The pooled (B, D) student and teacher features, float, the teacher's a constant."""
  student = common.pooled_feature(inputs.student_features, method_name, "student_features")
  teacher = common.pooled_feature(inputs.teacher_features, method_name, "teacher_features")
  return common.as_float(student), common.teacher_value(teacher)


def cosine_conditionals(feature, eps):
  """P of a (B, D) feature: rows of (cos + 1) / 2, normalized to sum to 1."""
  unit = feature / (common.vector_norm(feature, axis=1) + eps)
  kernel = (unit @ unit.T + 1.0) / 2.0
  return kernel / jnp.sum(kernel, axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class PKT:
  """Probabilistic knowledge transfer with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "pkt"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  ce_weight: float = 1.0
  feat_weight: float = 30000.0
  eps: float = 1e-7

  from_config = classmethod(common.method_from_config)

  def init(self, rng, inputs):
    del rng
    pooled_pair(self.name, inputs)
    return {}, {}

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = pooled_pair(self.name, inputs)
    student_p = cosine_conditionals(student, self.eps)
    teacher_p = cosine_conditionals(teacher, self.eps)
    kl = jnp.mean(teacher_p * jnp.log((teacher_p + self.eps) / (student_p + self.eps)))
    feat = self.feat_weight * kl
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
