"""Temperature x ensemble size grid (Stanton et al. 2021, Fig. 3 / section 4): tau in {1, 4} (and the
ablation values 8, 16 for m = 5) x m in {1, 3, 5} PreResNet-56 teachers -> PreResNet-56 on CIFAR-100.

Variants are named tau<T>_m<M>. The sweep trains each distinct teacher ensemble once and reuses it for
every temperature (variants with equal teacher sections share teachers).

  python run.py --config=configs/paper/temperature_ensemble.py:tau4_m5 --workdir=runs/tau_m/tau4_m5
  python sweep.py --config=configs/paper/temperature_ensemble.py --workdir=runs/tau_m
"""

from configs import cifar_kd
from configs.paper import with_variant

OVERRIDES = {f"tau{tau}_m{m}": {"distill.temperature": float(tau), "teacher.ensemble_size": m}
             for m in (1, 3, 5) for tau in (1, 4)}
OVERRIDES.update({f"tau{tau}_m5": {"distill.temperature": float(tau), "teacher.ensemble_size": 5}
                  for tau in (8, 16)})
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  return with_variant(cifar_kd.get_config(), OVERRIDES, variant)
