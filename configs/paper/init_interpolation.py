"""Initialization interpolation (Stanton et al. 2021, Fig. 6, section 6): the self-distilled
PreResNet-20 (LayerNorm) student starts at lambda * theta_teacher + (1 - lambda) * theta_random.

Paper: lambda <= 0.25 ends near 80 % train agreement, lambda = 0.375 jumps to about 97.6 %, lambda >= 0.5
gives >= 99.6 %: the optimizer finds the teacher's solution only when started in its basin.
Variants lam<value> (e.g. lam0.375). As in the original code, the student's learning rate is scaled by
(1 - lambda) with a floor of 1e-6 and its BatchNorm statistics are re-estimated after interpolation
(student.init_scale_lr, student.init_batch_stats; set them to False / 'interpolate' for the variant
that keeps the learning rate and mixes the statistics).

  python run.py --config=configs/paper/init_interpolation.py:lam0.5 --workdir=runs/init/lam0.5
  python sweep.py --config=configs/paper/init_interpolation.py --workdir=runs/init
"""

from configs.paper import self_distillation, with_variant

LAMBDAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
OVERRIDES = {f"lam{lam:g}": {"student.init": "interpolate", "student.init_lambda": lam}
             for lam in LAMBDAS}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  return with_variant(self_distillation.get_config(), OVERRIDES, variant)
