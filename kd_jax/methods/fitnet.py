"""FitNets: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR), as mdistiller trains it.

A regressor r maps the student's hint map f_s (one stage's output) to the shape of the teacher's
map f_t at the same stage, and the student learns to match it:

  L = w_ce * CE(z_s, y) + w_feat * mean_{b,h,w,c} (r(f_s) - f_t)^2,
  r(x) = ReLU(BN(conv(x))),

trained jointly with the student (the paper's two-stage schedule, hints first, is not the reference
code's). conv is mdistiller's ConvReg rule for the spatial sizes (student H_s, teacher H_t):
H_s = 2 H_t: 3x3 stride 2 padding 1; 2 H_s = H_t: 4x4 transposed conv, stride 2 padding 1;
H_s >= H_t: a (1 + H_s - H_t) x (1 + W_s - W_t) valid conv (1x1 at equal sizes); with bias. BN is
batch-statistics BatchNorm (common.BatchStatNorm); weights start as PyTorch's defaults.

Source: megvii-research/mdistiller, mdistiller/distillers/FitNet.py and _common.py (ConvReg);
CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.FITNET): hint layer 2, CE weight 1, feature weight
100 (RepDistiller: --hint_layer 2, -b 100). The reference's layer 2 counts the stem's output as
layer 0, so it is the second stage's output: hint_stage=2 here (stages count from 1, as the models'
sown 'stage1', 'stage2', ...).

Features: student_features[hint_stage - 1] and teacher_features[hint_stage - 1] (post-ReLU stage
maps). Params: {'conv': {'kernel', 'bias'}, 'norm': {'scale', 'bias'}}. Teacher ensembles would need
the members' maps stacked (m, B, H, W, C) and one target per member (e.g. the mean of the members'
MSEs); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.errors import KdJaxError
from kd_jax.methods import common


class HintRegressor(nn.Module):
  """mdistiller's ConvReg: conv (chosen by the two spatial sizes), batch-statistics BN, ReLU."""
  teacher_shape: tuple  # (H_t, W_t, C_t)

  @nn.compact
  def __call__(self, x):
    height, width, channels = self.teacher_shape
    in_height, in_width, in_channels = x.shape[1:]
    if in_height == 2 * height:
      fan_in = 9 * in_channels
      conv = nn.Conv(channels, (3, 3), strides=2, padding=1, name="conv",
                     kernel_init=common.torch_default_init(fan_in),
                     bias_init=common.torch_default_init(fan_in))
    elif 2 * in_height == height:
      fan_in = 16 * channels  # PyTorch's fan-in of a ConvTranspose2d weight (in, out, 4, 4)
      conv = nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                              transpose_kernel=True, name="conv",
                              kernel_init=common.torch_default_init(fan_in),
                              bias_init=common.torch_default_init(fan_in))
    else:
      kernel = (1 + in_height - height, 1 + in_width - width)
      fan_in = kernel[0] * kernel[1] * in_channels
      conv = nn.Conv(channels, kernel, padding="VALID", name="conv",
                     kernel_init=common.torch_default_init(fan_in),
                     bias_init=common.torch_default_init(fan_in))
    return nn.relu(common.BatchStatNorm(name="norm")(conv(x)))


@dataclasses.dataclass(frozen=True)
class FitNet:
  """FitNets' hint loss with mdistiller's CIFAR-100 weights (module docstring)."""
  name: ClassVar[str] = "fitnet"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  hint_stage: int = 2
  ce_weight: float = 1.0
  feat_weight: float = 100.0

  from_config = classmethod(common.method_from_config)

  def _hints(self, inputs):
    student = common.stage_maps(inputs.student_features, self.name, "student_features")
    teacher = common.stage_maps(inputs.teacher_features, self.name, "teacher_features")
    if not 1 <= self.hint_stage <= min(len(student), len(teacher)):
      raise KdJaxError(f"distill method 'fitnet': hint_stage={self.hint_stage} is not a stage of "
                       f"both networks (student {len(student)}, teacher {len(teacher)} stages).")
    student, teacher = student[self.hint_stage - 1], teacher[self.hint_stage - 1]
    height, student_height = teacher.shape[1], student.shape[1]
    if student_height < height and 2 * student_height != height:
      raise KdJaxError(f"distill method 'fitnet': the student's hint map is {student_height} "
                       f"pixels high, the teacher's {height}; a regressor maps a map only to a "
                       "smaller one or to one twice as high (choose another hint_stage).")
    return common.as_float(student), common.teacher_value(teacher)

  def _regressor(self, teacher_hint):
    return HintRegressor(teacher_shape=tuple(teacher_hint.shape[1:]))

  def init(self, rng, inputs):
    student, teacher = self._hints(inputs)
    return common.init_params(self._regressor(teacher), rng, student), {}

  def loss(self, params, state, inputs, rng):
    del rng
    student, teacher = self._hints(inputs)
    regressed = self._regressor(teacher).apply({"params": params}, student)
    feat = self.feat_weight * jnp.mean(jnp.square(regressed - teacher))
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
