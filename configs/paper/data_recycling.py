"""Data recycling (Stanton et al. 2021, section 5): CIFAR-100's train set split into seeded halves
D0 / D1; the 5x PreResNet-56 teachers learn from D0, the PreResNet-56 student is distilled on D0 (the
teachers' own data), D1 (new data) or D0 u D1. tau = 4. Train agreement is measured on the student's
distillation set.

  python run.py --config=configs/paper/data_recycling.py:d1 --workdir=runs/recycling/d1
  python sweep.py --config=configs/paper/data_recycling.py --workdir=runs/recycling
"""

from configs import cifar_kd
from configs.paper import with_variant

OVERRIDES = {"d0": {"distill.data_split": "d0"}, "d1": {"distill.data_split": "d1"},
             "d0_d1": {"distill.data_split": "all"}}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  config = cifar_kd.get_config()
  config.teacher.ensemble_size = 5
  config.teacher.data_split = "d0"
  return with_variant(config, OVERRIDES, variant)
