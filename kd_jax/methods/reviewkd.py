"""ReviewKD: Chen et al. 2021, "Distilling Knowledge via Knowledge Review" (CVPR): ABF + HCL.

The student's levels x_1..x_n (its post-ReLU stage maps, then its pooled feature as a 1 x 1 map)
are fused from the deepest down by attention-based fusion (ABF) modules, and each fused output is
matched to the teacher's level of the same index (its pre-ReLU stage maps, then its pooled feature):

  u_n = A_n(x_n);  u_i = A_i(x_i, r_{i+1}) for i < n, where the ABF A_i computes
    x = BN(conv1x1(x_i)) (to the middle width),
    with the residual r = nearest-resize(r_{i+1}) to x_i's size, z = sigmoid(conv1x1([x, r])) (2
    channels, with bias), x = x * z_0 + r * z_1  (not at the deepest level, which has no residual),
    x = nearest-resize(x) to the teacher level's size, r_i = x,  u_i = BN(conv3x3(x)) (to the
    teacher level's channels);
  HCL(u, t) = (mse(u, t) + sum_{l in (4, 2, 1), l < H} w_l mse(P_l u, P_l t)) / (1 + sum_l w_l),
    P_l the adaptive average pooling to l x l, w_l = 1/2, 1/4, 1/8 for the sizes kept, in order;
  L = w_ce * CE(z_s, y) + w_review * min(epoch / warmup_epochs, 1) * sum_i HCL(u_i, t_i).

The middle width is min(max_mid_channel, D_s) with D_s the student's pooled width (the reference's
min(512, in_channels[-1])); the 1x1 and 3x3 convs have no bias and start as kaiming_uniform(a=1),
the attention conv as PyTorch's default; BN is batch-statistics BatchNorm (common.BatchStatNorm).
When the two networks have different numbers of levels the last min(n_s, n_t) pair up (the reference
zips its lists from the deepest level down). The epoch is 1-based: step // steps_per_epoch + 1.

Source: megvii-research/mdistiller, mdistiller/distillers/ReviewKD.py (after dvlab-research/
ReviewKD, CIFAR-100/model/reviewkd.py); CIFAR-100 defaults: CE weight 1, ReviewKD weight 5
(configs/cifar100/reviewkd.yaml for resnet32x4 -> resnet8x4, and ReviewKD's script/reviewKD.sh for
most pairs: 8 for resnet32x4 -> ShuffleNetV2, 0.6 for resnet56 -> resnet20, 1 for resnet110 ->
resnet32), warm-up 20 epochs, max middle width 512, student post-ReLU features (STU_PREACT False).

Features: student_features (stage maps and the pooled feature; with student_preact, the student's
preact maps instead of its stage maps, and its pooled feature), teacher_preact_features and the
pooled feature ending teacher_features (feature_kind 'preact'). Params: {'abf_i': {'conv1',
'norm1', 'conv2', 'norm2', 'attention' (not at the deepest level)}} for level i = 0 (shallowest) up.
Teacher ensembles would need the members' maps stacked (m, B, H, W, C) and a rule to combine them
(e.g. the mean of the members' HCLs); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.ofd import aligned

# kaiming_uniform_(a=1): bound sqrt(6 / ((1 + a^2) fan_in)) = sqrt(3 / fan_in).
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class AttentionFusion(nn.Module):
  """One ABF module: returns (output u_i, residual r_i) (module docstring)."""
  mid_channels: int
  out_channels: int
  out_size: tuple  # the teacher level's (H, W)
  fuse: bool

  @nn.compact
  def __call__(self, x, residual=None):
    x = nn.Conv(self.mid_channels, (1, 1), use_bias=False, kernel_init=kaiming_uniform_a1,
                name="conv1")(x)
    x = common.BatchStatNorm(name="norm1")(x)
    if self.fuse:
      residual = common.nearest_resize(residual, x.shape[1:3])
      fan_in = 2 * self.mid_channels
      weights = nn.sigmoid(nn.Conv(2, (1, 1), kernel_init=common.torch_default_init(fan_in),
                                   bias_init=common.torch_default_init(fan_in),
                                   name="attention")(jnp.concatenate([x, residual], axis=-1)))
      x = x * weights[..., :1] + residual * weights[..., 1:]
    x = common.nearest_resize(x, self.out_size)
    out = nn.Conv(self.out_channels, (3, 3), padding=1, use_bias=False,
                  kernel_init=kaiming_uniform_a1, name="conv2")(x)
    return common.BatchStatNorm(name="norm2")(out), x


class ReviewFusion(nn.Module):
  """The ABF chain over the student's levels, deepest first; outputs shallowest first."""
  mid_channels: int
  teacher_shapes: tuple  # per level, shallowest first: (H, W, C)

  @nn.compact
  def __call__(self, levels):
    count = len(levels)
    outputs, residual = [None] * count, None
    for i in reversed(range(count)):
      height, width, channels = self.teacher_shapes[i]
      fusion = AttentionFusion(self.mid_channels, channels, (height, width), fuse=i < count - 1,
                               name=f"abf_{i}")
      outputs[i], residual = fusion(levels[i], residual)
    return outputs


def hierarchical_context_loss(student, teacher):
  """HCL of one level (module docstring)."""
  loss = jnp.mean(jnp.square(student - teacher))
  weight, total = 1.0, 1.0
  for size in (4, 2, 1):
    if size >= student.shape[1]:
      continue
    weight /= 2.0
    pooled_gap = (common.adaptive_avg_pool(student, (size, size))
                  - common.adaptive_avg_pool(teacher, (size, size)))
    loss = loss + weight * jnp.mean(jnp.square(pooled_gap))
    total += weight
  return loss / total


@dataclasses.dataclass(frozen=True)
class ReviewKD:
  """Knowledge review (ABF + HCL) with mdistiller's CIFAR-100 settings (module docstring)."""
  name: ClassVar[str] = "reviewkd"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "preact"

  ce_weight: float = 1.0
  reviewkd_weight: float = 5.0
  warmup_epochs: int = 20
  steps_per_epoch: int = 0
  max_mid_channel: int = 512
  student_preact: bool = False

  def __post_init__(self):
    common.check_steps_per_epoch(self)

  from_config = classmethod(common.method_from_config)

  def _levels(self, inputs):
    student_field = "student_preact_features" if self.student_preact else "student_features"
    student_maps = common.stage_maps(getattr(inputs, student_field), self.name, student_field)
    student_pooled = common.pooled_feature(inputs.student_features, self.name, "student_features")
    teacher_maps = common.stage_maps(inputs.teacher_preact_features, self.name,
                                     "teacher_preact_features")
    teacher_pooled = common.pooled_feature(inputs.teacher_features, self.name, "teacher_features")
    student = [*student_maps, student_pooled[:, None, None, :]]
    teacher = [*teacher_maps, teacher_pooled[:, None, None, :]]
    student, teacher = aligned(student, teacher)
    return [common.as_float(f) for f in student], [common.teacher_value(f) for f in teacher]

  def _fusion(self, student, teacher):
    return ReviewFusion(min(self.max_mid_channel, student[-1].shape[-1]),
                        tuple(tuple(t.shape[1:]) for t in teacher))

  def init(self, rng, inputs):
    student, teacher = self._levels(inputs)
    return common.init_params(self._fusion(student, teacher), rng, student), {}

  def loss(self, params, state, inputs, rng):
    del rng
    student, teacher = self._levels(inputs)
    outputs = self._fusion(student, teacher).apply({"params": params}, student)
    hcl = sum(hierarchical_context_loss(u, t) for u, t in zip(outputs, teacher))
    warmup = common.epoch_warmup(inputs.step, self.steps_per_epoch, self.warmup_epochs)
    review = self.reviewkd_weight * warmup * hcl
    return common.with_cross_entropy(self.ce_weight, inputs, review, state, hcl=hcl, warmup=warmup)
