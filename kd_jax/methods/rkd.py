"""RKD: Park et al. 2019, "Relational Knowledge Distillation" (CVPR), distance and angle losses.

On the pooled features e (B, D) of student and teacher:

  distance: d_ij = ||e_i - e_j|| (computed as sqrt(max(|e_i|^2 + |e_j|^2 - 2 e_i . e_j, eps)),
    d_ii = 0), normalized by its mean over the B (B - 1) pairs i != j: psi_D = d / mu;
  angle: with u_ij = (e_j - e_i) / max(||e_j - e_i||, 1e-12), psi_A(i, j, k) = u_ij . u_ik;
  L = w_ce * CE(z_s, y) + w_feat * (w_d * mean_{i,j} H(psi_D^s - psi_D^t)
                                     + w_a * mean_{i,j,k} H(psi_A^s - psi_A^t)),

with the Huber (smooth L1) penalty H(x) = x^2 / 2 for |x| < 1, |x| - 1/2 otherwise, averaged over
all B^2 (distance) and B^3 (angle) entries, diagonal ones included, as the reference's
F.smooth_l1_loss does. Both losses see the whole batch the loss is given.

Source: megvii-research/mdistiller, mdistiller/distillers/RKD.py (and RepDistiller,
distiller_zoo/RKD.py); CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.RKD): distance weight 25,
angle weight 50, eps 1e-12, not squared, CE weight 1, feature weight 1 (RepDistiller -b 1).

Features: the pooled (B, D) features that end student_features and teacher_features. No params, no
state. Teacher ensembles would need the members' pooled features stacked (m, B, D) and a rule to
combine them (e.g. the mean of the members' losses); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.pkt import pooled_pair


def pairwise_distances(e, squared, eps):
  """psi_D before normalization: (B, B) distances with a zero diagonal."""
  squares = jnp.sum(e * e, axis=1)
  distances = jnp.maximum(squares[:, None] + squares[None, :] - 2.0 * e @ e.T, eps)
  if not squared:
    distances = jnp.sqrt(distances)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, distances)


def normalized_distances(e, squared, eps):
  distances = pairwise_distances(e, squared, eps)
  batch = e.shape[0]
  return distances / (jnp.sum(distances) / (batch * (batch - 1)))


def angles(e):
  """psi_A: (B, B, B), entry (i, j, k) the cosine of the angle at e_i between e_j and e_k."""
  directions = common.l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)
  return jnp.einsum("ijd,ikd->ijk", directions, directions)


def huber(x):
  """The smooth L1 penalty of F.smooth_l1_loss (beta 1), elementwise."""
  magnitude = jnp.abs(x)
  return jnp.where(magnitude < 1.0, 0.5 * x * x, magnitude - 0.5)


@dataclasses.dataclass(frozen=True)
class RKD:
  """Relational KD with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "rkd"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  distance_weight: float = 25.0
  angle_weight: float = 50.0
  eps: float = 1e-12
  squared: bool = False
  ce_weight: float = 1.0
  feat_weight: float = 1.0

  from_config = classmethod(common.method_from_config)

  def init(self, rng, inputs):
    del rng
    pooled_pair(self.name, inputs)
    return {}, {}

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = pooled_pair(self.name, inputs)
    student, teacher = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
    distance = jnp.mean(huber(normalized_distances(student, self.squared, self.eps)
                              - normalized_distances(teacher, self.squared, self.eps)))
    angle = jnp.mean(huber(angles(student) - angles(teacher)))
    feat = self.feat_weight * (self.distance_weight * distance + self.angle_weight * angle)
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state, distance=distance,
                                     angle=angle)
