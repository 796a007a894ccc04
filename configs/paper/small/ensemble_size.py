"""Claims C1, C2 and C3 at laptop scale: m = 1, 3, 5 LeNet-5 teachers -> LeNet-5 student on 10,000
Fashion-MNIST images, tau 1 and 4 (configs/paper/small/_base.py). The three ensemble sizes of a seed
use the first m members of one trained five-member ensemble.

C1 (self-distillation, m = 1; paper Fig. 1 and section 4, ResNet-56 on CIFAR-100): the student's test
  accuracy is close to its teacher's while test agreement stays well below 100 % (about 72-75 %).
C2 (ensemble size; paper Fig. 3, tau 1): test agreement rises with m, about 77.5 / 82.5 / 84.5 % for
  m = 1 / 3 / 5, while the student's accuracy saturates near 75-76 % and the ensemble keeps improving;
  with m = 1 the student beats its teacher.
C3 (train agreement; paper Fig. 5 and section 6): agreement on the very data the student was distilled
  on also stays well below 100 % (78.9 % after 300 epochs for ResNet-20 self-distillation).

Paper scale (GPU, CIFAR-100, PreResNet-56, 200 / 300 epochs):
  python sweep.py --config=configs/paper/temperature_ensemble.py --workdir=runs/tau_m --seeds=0,1,2
  python sweep.py --config=configs/paper/ensemble_size.py --workdir=runs/ensemble_size --seeds=0,1,2
Here:
  python sweep.py --config=configs/paper/small/ensemble_size.py --workdir=runs/small/ensemble_size
"""

from configs.paper import with_variant
from configs.paper.small import _base

SIZES = (1, 3, 5)
TEMPERATURES = (1, 4)
OVERRIDES = {f"tau{tau}_m{m}": {"distill.temperature": float(tau), "teacher.ensemble_size": m}
             for tau in TEMPERATURES for m in SIZES}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  return with_variant(_base.get_config(), OVERRIDES, variant)
