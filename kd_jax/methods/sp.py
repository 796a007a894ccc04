"""SP: Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (ICCV).

With F the last stage map flattened to (B, H * W * C), the batch's similarity matrix is
G = F F^T (B x B), each row L2-normalized: G~_i = G_i / max(||G_i||, 1e-12). The student keeps the
teacher's pairwise similarities (channel counts and sizes may differ: G is B x B for both):

  L = w_ce * CE(z_s, y) + w_feat * (1/B^2) sum_{i,j} (G~_t - G~_s)_{ij}^2.

The loss couples the rows of the batch the loss sees (under data parallelism, the global batch).

Source: megvii-research/mdistiller, mdistiller/distillers/SP.py (RepDistiller distiller_zoo/SP.py,
the same, on its feat[-2], the last stage); CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.SP):
CE weight 1, feature weight 3000 (RepDistiller -b 3000).

Features: the last post-ReLU stage map of student and teacher. No params, no state. Teacher
ensembles would need the members' last maps stacked (m, B, H, W, C) and a rule to combine them (e.g.
the mean of the members' similarity losses); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.methods import common


def similarity_matrix(feature):
  """G~ of a (B, ...) feature: the row-normalized Gram matrix of the flattened rows."""
  flat = feature.reshape(feature.shape[0], -1)
  return common.l2_normalize(flat @ flat.T, axis=1)


@dataclasses.dataclass(frozen=True)
class SP:
  """Similarity-preserving KD with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "sp"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  ce_weight: float = 1.0
  feat_weight: float = 3000.0

  from_config = classmethod(common.method_from_config)

  def _last_maps(self, inputs):
    student = common.stage_maps(inputs.student_features, self.name, "student_features")[-1]
    teacher = common.stage_maps(inputs.teacher_features, self.name, "teacher_features")[-1]
    return common.as_float(student), common.teacher_value(teacher)

  def init(self, rng, inputs):
    del rng
    self._last_maps(inputs)
    return {}, {}

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = self._last_maps(inputs)
    batch = student.shape[0]
    gap = similarity_matrix(teacher) - similarity_matrix(student)
    feat = self.feat_weight * jnp.sum(jnp.square(gap)) / batch**2
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
