"""OFD: Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation" (ICCV).

OFD distils the teacher's pre-ReLU stage maps t through a connector r (conv + BN) on the student's
pre-ReLU maps s, with a partial L2 distance that ignores what the ReLU would discard anyway:

  d(s, t) = (s - t)^2 where t > 0 or s > t (t <= 0),   0 where s <= t <= 0,

except that a negative teacher response is replaced by the margin m_c of its channel: for
t <= m_c the target is m_c, so with s = r(s_student),

  d = (s - m)^2 [s > m, t <= m] + (s - t)^2 [s > t, m < t <= 0] + (s - t)^2 [t > 0],
  L = w_ce * CE(z_s, y) + w_feat * sum_i 2^-(n-1-i) (1/B) sum_{b,h,w,c} d_i,

the deepest of the n stages weighted 1, each shallower one half the next (the teacher map is
average-pooled to the student's size). The margin is the expected value of the negative responses of
the teacher's pre-ReLU Gaussian N(mu_c, sigma_c^2), given by the BatchNorm before that ReLU
(mu = its bias beta, sigma = |its scale gamma|):

  m_c = E[x | x < 0] = mu - sigma phi(mu / sigma) / Phi(-mu / sigma)   if Phi(-mu / sigma) > 0.001,
  m_c = -3 sigma otherwise.

The connector: k x k conv (no bias, padding (k - 1) / 2, N(0, 2 / (k^2 C_t)) init) and
batch-statistics BN (common.BatchStatNorm). When the two networks have different numbers of stages,
the last min(n_s, n_t) of each pair up (the reference's _align_list).

Source: megvii-research/mdistiller, mdistiller/distillers/OFD.py (after
clovaai/overhaul-distillation); CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.OFD): CE weight 1,
feature weight 0.001, connector kernel 1. mdistiller's OFD also switches the teacher to training
mode (batch statistics in its BN); here the teacher runs as the step runs it.

Features: student_preact_features and teacher_preact_features (each stage's map before its last
ReLU; feature_kind 'preact'). init needs the teacher's BN statistics behind the margins:
`teacher_bn_mean` and `teacher_bn_std`, tuples with one (C_t,) array per teacher stage (the bias and
the scale of the BatchNorm right before each stage's final ReLU). Params: {'connector_i': {'conv':
{'kernel' (k, k, C_s, C_t)}, 'norm': {'scale', 'bias'}}} per aligned stage. State: {'margins': one
(C_t,) array per aligned stage}, constant. Teacher ensembles would need the members' maps stacked
(m, B, H, W, C) and margins per member; check_ensemble refuses m > 1 for now.
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from scipy import special

from kd_jax.errors import KdJaxError
from kd_jax.methods import common
from kd_jax.models.layers import conv_init


def margins(mean, std):
  """m_c of a teacher BN's (mean = beta, std = gamma) per channel, in float32 (module docstring)."""
  mean, std = np.asarray(mean, np.float64), np.abs(np.asarray(std, np.float64))
  ratio = mean / std
  tail = special.ndtr(-ratio)
  density = np.exp(-ratio**2 / 2) / math.sqrt(2 * math.pi)
  with np.errstate(divide="ignore", invalid="ignore"):
    expected = mean - std * density / tail
  return np.where(tail > 0.001, expected, -3 * std).astype(np.float32)


def aligned(*feature_lists):
  """The last min(len) entries of each list (the reference's _align_list)."""
  count = min(len(features) for features in feature_lists)
  return [list(features[len(features) - count:]) for features in feature_lists]


def partial_l2(student, teacher, margin):
  """OFD's d(s, t) with margin m (broadcast over the channels), elementwise."""
  to_margin = (student > margin) & (teacher <= margin)
  to_negative = (student > teacher) & (teacher > margin) & (teacher <= 0)
  gap = jnp.square(student - teacher)
  return (jnp.square(student - margin) * to_margin + gap * to_negative + gap * (teacher > 0))


class Connector(nn.Module):
  """conv k x k (no bias) + batch-statistics BN, to the teacher's channels."""
  channels: int
  kernel_size: int

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x = nn.Conv(self.channels, (k, k), padding=(k - 1) // 2, use_bias=False, kernel_init=conv_init,
                name="conv")(x)
    return common.BatchStatNorm(name="norm")(x)


class Connectors(nn.Module):
  teacher_channels: tuple
  kernel_size: int

  @nn.compact
  def __call__(self, student_maps):
    return [Connector(c, self.kernel_size, name=f"connector_{i}")(s)
            for i, (s, c) in enumerate(zip(student_maps, self.teacher_channels))]


@dataclasses.dataclass(frozen=True)
class OFD:
  """Overhaul of feature distillation with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "ofd"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "preact"

  ce_weight: float = 1.0
  feat_weight: float = 0.001
  connector_kernel: int = 1

  from_config = classmethod(common.method_from_config)

  def _maps(self, inputs):
    student = common.stage_maps(inputs.student_preact_features, self.name,
                                "student_preact_features")
    teacher = common.stage_maps(inputs.teacher_preact_features, self.name,
                                "teacher_preact_features")
    student, teacher = aligned(student, teacher)
    return [common.as_float(f) for f in student], [common.teacher_value(f) for f in teacher]

  def _connectors(self, teacher_maps):
    return Connectors(tuple(t.shape[-1] for t in teacher_maps), self.connector_kernel)

  def init(self, rng, inputs, *, teacher_bn_mean, teacher_bn_std):
    """Connector params and the margins of the teacher BN statistics (module docstring)."""
    student, teacher = self._maps(inputs)
    stages = len(common.stage_maps(inputs.teacher_preact_features, self.name,
                                   "teacher_preact_features"))
    if not len(teacher_bn_mean) == len(teacher_bn_std) == stages:
      raise KdJaxError("distill method 'ofd': teacher_bn_mean and teacher_bn_std need one array "
                       f"per teacher stage ({stages}; got {len(teacher_bn_mean)} and "
                       f"{len(teacher_bn_std)}).")
    means, stds = teacher_bn_mean[stages - len(teacher):], teacher_bn_std[stages - len(teacher):]
    stage_margins = []
    for i, (mean, std, t) in enumerate(zip(means, stds, teacher)):
      if np.shape(mean) != (t.shape[-1],) or np.shape(std) != (t.shape[-1],):
        raise KdJaxError(f"distill method 'ofd': the BN statistics of aligned stage {i} have "
                         f"shapes {np.shape(mean)} and {np.shape(std)}, the teacher map has "
                         f"{t.shape[-1]} channels.")
      stage_margins.append(jnp.asarray(margins(mean, std)))
    params = common.init_params(self._connectors(teacher), rng, student)
    return params, {"margins": tuple(stage_margins)}

  def loss(self, params, state, inputs, rng):
    del rng
    student, teacher = self._maps(inputs)
    connected = self._connectors(teacher).apply({"params": params}, student)
    count = len(connected)
    total = 0.0
    for i, (s, t, margin) in enumerate(zip(connected, teacher, state["margins"])):
      t = common.adaptive_avg_pool(t, s.shape[1:3])
      distance = partial_l2(s, t, margin.astype(s.dtype))
      total = total + jnp.sum(distance) / s.shape[0] / 2 ** (count - i - 1)
    feat = self.feat_weight * total
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
