"""AT: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR), as in mdistiller.

The attention map of a (B, H, W, C) stage map f is the channel mean of |f|^p, flattened over the
pixels and L2-normalized per example:

  a(f) = v / max(||v||, 1e-12),  v_{b,hw} = (1/C) sum_c |f_{b,hw,c}|^p,
  L = w_ce * CE(z_s, y) + w_feat * sum_stages mean_{b,hw} (a(f_s) - a(f_t))^2,

after average-pooling the wider of the two maps to the other's size (the channel counts may differ:
a is per pixel). The paper's loss is the norm ||a_s - a_t||_2 (beta/2 times it); the reference code
squares and averages over the pixels and the batch instead, as here. The reference raises f itself
to the power p; |f|^p (the paper's) is the same for the post-ReLU maps and for even p.

Source: megvii-research/mdistiller, mdistiller/distillers/AT.py (and RepDistiller
distiller_zoo/AT.py, the same loss); CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.AT): p 2, CE
weight 1, feature weight 1000 (RepDistiller -b 1000). Every stage's output enters (the reference's
feats[1:]).

Features: every post-ReLU stage map of student and teacher, paired stage by stage (the same number
of stages). No params, no state. Teacher ensembles would need the members' maps stacked
(m, B, H, W, C) and a rule to combine the members (e.g. the mean of their losses); check_ensemble
refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.errors import KdJaxError
from kd_jax.methods import common


def pooled_stage_pairs(method_name, inputs):
  """[(student map, teacher map)] per stage, as floats (the teacher's a constant), the wider of each
  pair average-pooled to the other's size (AT, NST and VID)."""
  student = common.stage_maps(inputs.student_features, method_name, "student_features")
  teacher = common.stage_maps(inputs.teacher_features, method_name, "teacher_features")
  if len(student) != len(teacher):
    raise KdJaxError(f"distill method {method_name!r} pairs the stages: the student has "
                     f"{len(student)}, the teacher {len(teacher)}.")
  return [common.pool_to_smaller(common.as_float(s), common.teacher_value(t))
          for s, t in zip(student, teacher)]


def attention_map(feature, p):
  """a(f): (B, H, W, C) -> (B, H * W), the L2-normalized channel mean of |f|^p."""
  pooled = jnp.mean(jnp.abs(feature) ** p, axis=-1).reshape(feature.shape[0], -1)
  return common.l2_normalize(pooled, axis=-1)


@dataclasses.dataclass(frozen=True)
class AT:
  """Attention transfer with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "at"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  p: float = 2.0
  ce_weight: float = 1.0
  feat_weight: float = 1000.0

  from_config = classmethod(common.method_from_config)

  def init(self, rng, inputs):
    del rng
    pooled_stage_pairs(self.name, inputs)
    return {}, {}

  def loss(self, params, state, inputs, rng):
    del params, rng
    total = sum(jnp.mean(jnp.square(attention_map(s, self.p) - attention_map(t, self.p)))
                for s, t in pooled_stage_pairs(self.name, inputs))
    feat = self.feat_weight * total
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
