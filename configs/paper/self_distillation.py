"""Shared base of the optimization study (Stanton et al. 2021, section 6): self-distillation of a
PreResNet-20 whose BatchNorms are replaced by LayerNorm (so the student's function does not depend on
batch statistics), CIFAR-100, one teacher, tau = 4, the paper's recipes. Used by init_interpolation.py,
optimization.py and table1.py; on its own it is their random-init SGD 300-epoch point.

  python run.py --config=configs/paper/self_distillation.py --workdir=runs/self_distillation
"""

from configs import cifar_kd
from kd_jax import config as kd_config

VARIANTS = ("default",)


def get_config(variant=None):
  config = cifar_kd.get_config()
  config.teacher.ensemble_size = 1
  config.teacher.model = kd_config.model_config(name="preresnet", depth=20, norm="layer")
  config.student.model = kd_config.model_config(name="preresnet", depth=20, norm="layer")
  return config
