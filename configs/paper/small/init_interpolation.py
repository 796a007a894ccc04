"""Claim C5 at laptop scale: initialization interpolation with the original's learning-rate rule.
LeNet-5 self-distillation on 10,000 Fashion-MNIST images (configs/paper/small/_base.py); the student
starts at lambda * theta_teacher + (1 - lambda) * theta_random, and its learning rate is scaled by
(1 - lambda) with a floor of 1e-6 (student.init_scale_lr, as the authors' code). LeNet-5 has no
BatchNorm, so student.init_batch_stats changes nothing here; it is set to the original's choice.

C5 (paper Fig. 6, section 6, PreResNet-20 LayerNorm on CIFAR-100): lambda <= 0.25 ends near 80 % train
agreement, lambda = 0.375 jumps to about 97.6 %, lambda >= 0.5 gives >= 99.6 %: a sharp jump to about
100 % train agreement above some lambda.

Paper scale (GPU):
  python sweep.py --config=configs/paper/init_interpolation.py --workdir=runs/init --seeds=0,1,2
Here:
  python sweep.py --config=configs/paper/small/init_interpolation.py --workdir=runs/small/init
"""

from configs.paper import with_variant
from configs.paper.small import _base

# lambda = 1 (the teacher itself, at a learning rate of 1e-6) is left out: it agrees by construction.
LAMBDAS = (0.0, 0.25, 0.375, 0.5, 0.75)
OVERRIDES = {f"lam{lam:g}": {"student.init": "interpolate", "student.init_lambda": lam,
                             "student.init_scale_lr": True,
                             "student.init_batch_stats": "reestimate"}
             for lam in LAMBDAS}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  return with_variant(_base.get_config(), OVERRIDES, variant)
