"""Distillation losses of the paper's code (appendix): forward KL (Eq. 1), reverse KL, symmetric KL,
Brier score, and hard teacher labels (argmax or sampled), for 5x PreResNet-56 -> PreResNet-56 on
CIFAR-100 at tau = 4, plus the ablation alpha = 0.5 (half label NLL) with the forward KL.

  python run.py --config=configs/paper/loss_variants.py:reverse_kl --workdir=runs/losses/reverse_kl
  python sweep.py --config=configs/paper/loss_variants.py --workdir=runs/losses
"""

from configs import cifar_kd
from configs.paper import with_variant
from kd_jax.config import LOSS_KINDS

OVERRIDES = {kind: {"distill.loss": kind} for kind in LOSS_KINDS}
OVERRIDES["forward_kl_alpha0.5"] = {"distill.loss": "forward_kl", "distill.alpha": 0.5}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  config = cifar_kd.get_config()
  config.teacher.ensemble_size = 5
  return with_variant(config, OVERRIDES, variant)
