"""NST: Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer".

Each channel of a stage map is a distribution of "neuron selectivity" over the pixels: with
f_{b,c} in R^{HW} L2-normalized per channel (f^ = f / max(||f||, 1e-12)), NST minimizes the squared
maximum mean discrepancy between the student's and the teacher's channel sets under the polynomial
kernel k(x, y) = (x . y)^2:

  MMD^2 = mean_{b,i,j} k(t^_{b,i}, t^_{b,j}) + mean_{b,i,j} k(s^_{b,i}, s^_{b,j})
          - 2 mean_{b,i,j} k(s^_{b,i}, t^_{b,j}),
  L = w_ce * CE(z_s, y) + w_feat * sum_stages MMD^2,

after average-pooling the wider of the two maps to the other's size (channel counts may differ;
each mean is over its own pairs). The teacher-teacher term is a constant of the student.

Source: megvii-research/mdistiller, mdistiller/distillers/NST.py (and RepDistiller,
distiller_zoo/NST.py); CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.NST): CE weight 1, feature
weight 50 (RepDistiller -b 50). Every stage's output enters (the reference's feats[1:]).

Features: every post-ReLU stage map of student and teacher, stage by stage. No params, no state.
Teacher ensembles would need the members' maps stacked (m, B, H, W, C) and a rule to combine them
(e.g. the mean of the members' MMDs); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.at import pooled_stage_pairs


def channel_distributions(feature):
  """(B, H, W, C) -> (B, C, H * W), each channel's pixel vector L2-normalized."""
  batch, channels = feature.shape[0], feature.shape[-1]
  per_channel = jnp.swapaxes(feature.reshape(batch, -1, channels), 1, 2)
  return common.l2_normalize(per_channel, axis=-1)


def mean_polynomial_kernel(a, b):
  """mean over b, i, j of (a_{b,i} . b_{b,j})^2 for a (B, Ca, N) and b (B, Cb, N)."""
  return jnp.mean(jnp.square(jnp.einsum("bin,bjn->bij", a, b)))


@dataclasses.dataclass(frozen=True)
class NST:
  """Neuron selectivity transfer with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "nst"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  ce_weight: float = 1.0
  feat_weight: float = 50.0

  from_config = classmethod(common.method_from_config)

  def init(self, rng, inputs):
    del rng
    pooled_stage_pairs(self.name, inputs)
    return {}, {}

  def loss(self, params, state, inputs, rng):
    del params, rng
    total = 0.0
    for student, teacher in pooled_stage_pairs(self.name, inputs):
      s, t = channel_distributions(student), channel_distributions(teacher)
      total = total + (mean_polynomial_kernel(t, t) + mean_polynomial_kernel(s, s)
                       - 2.0 * mean_polynomial_kernel(s, t))
    feat = self.feat_weight * total
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
