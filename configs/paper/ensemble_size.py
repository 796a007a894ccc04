"""Ensemble size (Stanton et al. 2021, Fig. 3 and appendix): m = 1, 3, 5, 12 PreResNet-56 teachers ->
PreResNet-56 student on CIFAR-100, tau = 1, alpha = 0, the paper's recipes.

Paper: test agreement about 77.5 / 82.5 / 84.5 / 86 % for m = 1 / 3 / 5 / 12; student accuracy
saturates near 75-76 % while the ensemble keeps improving; for m = 1 the student beats its teacher.
Teacher i is seeded by its index, so the m = 3 ensemble is the first three members of m = 5.

  python run.py --config=configs/paper/ensemble_size.py:m5 --workdir=runs/ensemble_size/m5
  python sweep.py --config=configs/paper/ensemble_size.py --workdir=runs/ensemble_size --seeds=0,1,2
"""

from configs import cifar_kd
from configs.paper import with_variant

OVERRIDES = {f"m{m}": {"teacher.ensemble_size": m} for m in (1, 3, 5, 12)}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  config = cifar_kd.get_config()
  config.distill.temperature = 1.0
  return with_variant(config, OVERRIDES, variant)
