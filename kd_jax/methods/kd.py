"""KD: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", as mdistiller weights it.

With p^tau = softmax(z / tau) (z first z-scored under logit standardization, methods/common.py),

  L = w_ce * CE(z_s, y) + w_kd * tau^2 * (1/B) sum_b KL(p_t^tau || p_s^tau),

  d/dz_s of the KD term (per row, before the batch mean) = w_kd * tau * (p_s^tau - p_t^tau),

so tau^2 keeps the gradient's size roughly independent of tau. The KL form (mdistiller's
F.kl_div(...).sum(1).mean()) differs from the cross-entropy of kd_jax.losses' forward_kl by the
teacher's entropy only: the same gradient, a loss that is 0 at a perfect match. CE is over the
labelled rows, on the raw logits also under logit standardization (as in its reference); the KD term
is over every row.

Source: megvii-research/mdistiller, mdistiller/distillers/KD.py; its CIFAR-100 defaults
(mdistiller/engine/cfg.py, CFG.KD): temperature 4, CE weight 0.1, KD weight 0.9 (also RepDistiller's
`-r 0.1 -a 0.9`, scripts/run_cifar_distill.sh). With logit standardization the reference
(sunshangquan/logit-standardization-KD, tools/train.py: --logit-stand --base-temp 2 --kd-weight 9)
runs temperature 2 and KD weight 9, CE weight still 0.1.

Teacher ensembles: the loss reads only teacher_logits, so the step's log-mean-probability logits of
the members serve as they are.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from kd_jax.methods import common


def kl_to_teacher(student_logits, teacher_logits, temperature):
  """Per row KL(p_t^tau || p_s^tau) of (already standardized, if so configured) logits: (B,)."""
  student_log_probs = common.log_softmax(student_logits, temperature)
  teacher_log_probs = common.log_softmax(teacher_logits, temperature)
  teacher_probs = jnp.exp(teacher_log_probs)
  return jnp.sum(teacher_probs * (teacher_log_probs - student_log_probs), axis=-1)


def tempered_logits(student_logits, teacher_logits, logit_standardization):
  """The logits that enter the temperature: z-scored when `logit_standardization`; the teacher's a
  constant of the loss."""
  student, teacher = common.as_float(student_logits), common.teacher_value(teacher_logits)
  if logit_standardization:
    return common.standardize_logits(student), common.standardize_logits(teacher)
  return student, teacher


@dataclasses.dataclass(frozen=True)
class KD:
  """Hinton et al.'s KD with mdistiller's CE and KD weights (module docstring)."""
  name: ClassVar[str] = "kd"
  uses_features: ClassVar[bool] = False
  feature_kind: ClassVar[str] = ""

  temperature: float = 4.0
  ce_weight: float = 0.1
  kd_weight: float = 0.9
  logit_standardization: bool = False

  from_config = classmethod(common.method_from_config)

  init = common.no_parameters

  def loss(self, params, state, inputs, rng):
    del params, rng
    student, teacher = tempered_logits(inputs.student_logits, inputs.teacher_logits,
                                       self.logit_standardization)
    kd = self.kd_weight * self.temperature**2 * jnp.mean(
        kl_to_teacher(student, teacher, self.temperature))
    return common.with_cross_entropy(self.ce_weight, inputs, kd, state)
