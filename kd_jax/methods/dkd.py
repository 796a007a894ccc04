"""DKD: Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR).

Split the tempered probabilities p = softmax(z / tau) of a row with label g into the binary
(target, non-target) pair b = [p_g, 1 - p_g] and the distribution over the other classes
p^_j = p_j / (1 - p_g) = softmax_{j != g}(z_j / tau). KL(p_t || p_s) then decouples exactly into

  KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t,g) * KL(p^_t || p^_s),

target-class KD (TCKD) plus non-target-class KD (NCKD) with a weight that shrinks as the teacher
grows confident. DKD frees the two weights:

  L = w_ce * CE(z_s, y) + warmup(epoch) * (alpha * TCKD + beta * NCKD),
  TCKD = tau^2 * (1/B) sum_b KL(b_t || b_s),   NCKD = tau^2 * (1/B) sum_b KL(p^_t || p^_s),
  warmup(epoch) = min(epoch / warmup_epochs, 1), epoch = step // steps_per_epoch + 1.

The reference drops the target class from p^ by subtracting 1000 from its tempered logit before the
softmax; this drops it exactly (the same value up to e^-1000). Both terms need the label, so rows
without one (-1) leave DKD's means as they leave CE's (the reference has labels on every row).
Under logit standardization both logit rows are z-scored first (common.standardize_logits).

Source: megvii-research/mdistiller, mdistiller/distillers/DKD.py; CIFAR-100 defaults
(mdistiller/engine/cfg.py, CFG.DKD): CE weight 1, alpha 1, beta 8 (configs/cifar100/dkd/*.yaml:
beta 8 for resnet32x4 -> resnet8x4 and the ShuffleNet / ResNet50 -> MobileNetV2 pairs, 2 for
resnet56 -> resnet20 and resnet110 -> resnet32, 6 for vgg13 -> vgg8 / MobileNetV2 and wrn_40_2 ->
wrn_16_2 / wrn_40_1), temperature 4, warm-up 20 epochs. With logit standardization the reference
(sunshangquan/logit-standardization-KD, tools/train.py) multiplies alpha and beta by its KD weight 9
and uses temperature 2.

Teacher ensembles: the loss reads only teacher_logits, so the ensemble's log-mean-probability logits
serve as they are.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.kd import tempered_logits


def decoupled_kl(student_logits, teacher_logits, labels, temperature):
  """Per row (KL(b_t || b_s), KL(p^_t || p^_s)), both (B,); `labels` must all be valid classes."""
  target = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=bool)

  def split(logits):  # log p, log [p_g, 1 - p_g] and log p^ (its target entry is never used)
    log_probs = common.log_softmax(logits, temperature)
    log_target = jnp.sum(jnp.where(target, log_probs, 0.0), axis=-1)
    log_rest = jax.nn.logsumexp(jnp.where(target, -jnp.inf, log_probs), axis=-1)
    return jnp.stack([log_target, log_rest], axis=-1), log_probs - log_rest[:, None]

  student_binary, student_rest = split(student_logits)
  teacher_binary, teacher_rest = split(teacher_logits)
  tckd = jnp.sum(jnp.exp(teacher_binary) * (teacher_binary - student_binary), axis=-1)
  # Masked before the product: at the target, exp(teacher_rest) may overflow, and an inf there
  # would turn the zero gradient of a masked product into NaN.
  teacher_probs = jnp.where(target, 0.0, jnp.exp(teacher_rest))
  nckd = jnp.sum(teacher_probs * jnp.where(target, 0.0, teacher_rest - student_rest), axis=-1)
  return tckd, nckd


@dataclasses.dataclass(frozen=True)
class DKD:
  """Decoupled KD with mdistiller's CIFAR-100 defaults and its epoch warm-up (module docstring)."""
  name: ClassVar[str] = "dkd"
  uses_features: ClassVar[bool] = False
  feature_kind: ClassVar[str] = ""

  ce_weight: float = 1.0
  alpha: float = 1.0
  beta: float = 8.0
  temperature: float = 4.0
  warmup_epochs: int = 20
  steps_per_epoch: int = 0
  logit_standardization: bool = False

  def __post_init__(self):
    common.check_steps_per_epoch(self)

  from_config = classmethod(common.method_from_config)

  init = common.no_parameters

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = tempered_logits(inputs.student_logits, inputs.teacher_logits,
                                       self.logit_standardization)
    labelled = inputs.labels >= 0
    tckd, nckd = decoupled_kl(student, teacher, jnp.maximum(inputs.labels, 0), self.temperature)
    count = jnp.maximum(jnp.sum(labelled), 1)
    scale = self.temperature**2 / count
    tckd = scale * jnp.sum(jnp.where(labelled, tckd, 0.0))
    nckd = scale * jnp.sum(jnp.where(labelled, nckd, 0.0))
    warmup = common.epoch_warmup(inputs.step, self.steps_per_epoch, self.warmup_epochs)
    distill = warmup * (self.alpha * tckd + self.beta * nckd)
    return common.with_cross_entropy(self.ce_weight, inputs, distill, state, tckd=tckd, nckd=nckd,
                                     warmup=warmup)
