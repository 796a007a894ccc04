"""VID: Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer" (CVPR).

VID maximizes a variational lower bound of the mutual information between the student's and the
teacher's stage maps: the teacher's map is modelled as a Gaussian whose mean a small regressor
predicts from the student's map and whose variance is a trained per-channel constant,

  mu = r(f_s),  r = conv1x1 - ReLU - conv1x1 - ReLU - conv1x1 (C_s -> C_t -> C_t -> C_t, no bias),
  sigma_c^2 = softplus(alpha_c) + eps,
  L = w_ce * CE(z_s, y) + w_feat * sum_stages mean_{b,h,w,c} (1/2) ((mu - f_t)^2 / sigma_c^2
                                                                     + log sigma_c^2),

the Gaussian negative log-likelihood without its constant, after average-pooling the wider of the
two maps to the other's size. alpha starts at softplus^-1(init_pred_var - eps), so sigma^2 starts at
init_pred_var.

Source: HobbitLong/RepDistiller, distiller_zoo/VID.py (from the authors' ssahn0215/
variational-information-distillation) and megvii-research/mdistiller, mdistiller/distillers/VID.py;
CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.VID): init_pred_var 5, eps 1e-5, CE weight 1,
feature weight 1 (RepDistiller -b 1); the regressor's middle width is C_t (RepDistiller's
VIDLoss(s, t, t)). The variances are trained, as in the paper and RepDistiller (a module Parameter);
mdistiller keeps its log-scales in a plain list that its optimizer never sees, so there they stay
fixed at init. Every stage's output enters (the references' feats[1:] / feat[1:-1]).

Features: every post-ReLU stage map of student and teacher, stage by stage. Params: one
{'regressor_i': {'Conv_0', 'Conv_1', 'Conv_2': {'kernel' (1, 1, C_in, C_out)}}, 'log_scale_i':
(C_t,)} per stage i, PyTorch's default conv init. Teacher ensembles would need the members' maps
stacked (m, B, H, W, C) and a Gaussian per member (or of their mean); check_ensemble refuses m > 1
for now.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.methods import common
from kd_jax.methods.at import pooled_stage_pairs


class MeanRegressor(nn.Module):
  """r: conv1x1 - ReLU - conv1x1 - ReLU - conv1x1 to `channels`, no biases."""
  channels: int

  @nn.compact
  def __call__(self, x):
    for i, fan_in in enumerate((x.shape[-1], self.channels, self.channels)):
      if i:
        x = nn.relu(x)
      x = nn.Conv(self.channels, (1, 1), use_bias=False,
                  kernel_init=common.torch_default_init(fan_in))(x)
    return x


class VariationalRegressors(nn.Module):
  """Per stage i: the mean regressor 'regressor_i' and the log-scales 'log_scale_i' of sigma^2."""
  teacher_channels: tuple
  init_pred_var: float
  eps: float

  @nn.compact
  def __call__(self, student_maps):
    means, variances = [], []
    start = np.log(np.expm1(self.init_pred_var - self.eps))
    for i, (student, channels) in enumerate(zip(student_maps, self.teacher_channels)):
      means.append(MeanRegressor(channels, name=f"regressor_{i}")(student))
      log_scale = self.param(f"log_scale_{i}", nn.initializers.constant(start), (channels,))
      variances.append(jax.nn.softplus(log_scale) + self.eps)
    return means, variances


@dataclasses.dataclass(frozen=True)
class VID:
  """Variational information distillation with the references' CIFAR-100 settings (module
  docstring)."""
  name: ClassVar[str] = "vid"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  init_pred_var: float = 5.0
  eps: float = 1e-5
  ce_weight: float = 1.0
  feat_weight: float = 1.0

  from_config = classmethod(common.method_from_config)

  def _pooled_maps(self, inputs):
    pairs = pooled_stage_pairs(self.name, inputs)
    return [s for s, _ in pairs], [t for _, t in pairs]

  def _regressors(self, teacher_maps):
    return VariationalRegressors(tuple(t.shape[-1] for t in teacher_maps), self.init_pred_var,
                                 self.eps)

  def init(self, rng, inputs):
    student, teacher = self._pooled_maps(inputs)
    return common.init_params(self._regressors(teacher), rng, student), {}

  def loss(self, params, state, inputs, rng):
    del rng
    student, teacher = self._pooled_maps(inputs)
    means, variances = self._regressors(teacher).apply({"params": params}, student)
    total = 0.0
    for mean, variance, target in zip(means, variances, teacher):
      total = total + jnp.mean(0.5 * (jnp.square(mean - target) / variance + jnp.log(variance)))
    feat = self.feat_weight * total
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
