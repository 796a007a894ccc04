"""Distillation losses of the paper's original code (appendix), for 5x PreResNet-56 -> PreResNet-56 on
CIFAR-100 at tau = 4, with the original's definitions, scaling and alpha (samuelstanton/gnosis,
gnosis/distillation/classification.py and config/loss/*.yaml):

  forward_kl    tau^2 H(p_t, p_s), Eq. 1                                 alpha 0
  reverse_ce    tau^2 H(p_s, p_t) = tau^2 (KL(p_s || p_t) + H(p_s))       alpha 0
  symmetric_kl  KL(p_t || p_s) + KL(p_s || p_t) (no tau^2)                alpha 0.5
  brier         (1 / C) sum_j (p_s_j - p_t_j)^2 (no tau^2)                alpha 0.5
  hard_argmax   -tau^2 log p_s(argmax p_t)                                alpha 0.5
  hard_sample   -tau^2 log p_s(y), y ~ p_t                                alpha 0.5
  forward_kl_alpha0.5  the ablation alpha = 0.5 (half label NLL) with the forward loss.

(p = softmax(z / tau); alpha weighs the label NLL, L = alpha NLL + (1 - alpha) L_KD.) Our own kinds
reverse_kl, symmetric_kl_tau2 and brier_tau2 (kd_jax/losses.py) are not variants here; pass
--config.distill.loss=<kind> to run one.

  python run.py --config=configs/paper/loss_variants.py:reverse_ce --workdir=runs/losses/reverse_ce
  python sweep.py --config=configs/paper/loss_variants.py --workdir=runs/losses
"""

from configs import cifar_kd
from configs.paper import with_variant

# The original's alpha per loss (config/loss/*.yaml).
ORIGINAL_ALPHA = {"forward_kl": 0.0, "reverse_ce": 0.0, "symmetric_kl": 0.5, "brier": 0.5,
                  "hard_argmax": 0.5, "hard_sample": 0.5}
OVERRIDES = {kind: {"distill.loss": kind, "distill.alpha": alpha}
             for kind, alpha in ORIGINAL_ALPHA.items()}
OVERRIDES["forward_kl_alpha0.5"] = {"distill.loss": "forward_kl", "distill.alpha": 0.5}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  config = cifar_kd.get_config()
  config.teacher.ensemble_size = 5
  return with_variant(config, OVERRIDES, variant)
