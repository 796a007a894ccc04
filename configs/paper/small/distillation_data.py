"""Claim C4 at laptop scale: what the student is distilled on. Three LeNet-5 teachers -> LeNet-5 on
10,000 Fashion-MNIST images, tau 4 (configs/paper/small/_base.py); the teachers are the first three
members of the suite's shared ensemble (trained without augmentation), only the student's data changes.

Variants: baseline (the training images as they are), mixup (inputs only, one lambda ~ U[0, 1] per
batch, labelled by the teachers), noise (each image replaced by uniform noise with p = 0.2),
ood_cifar10 (2,000 CIFAR-10 training images in grayscale, resized to 28x28, appended to
the 10,000: 1/6 of the distillation set, the original code's proportion for 10,000 SVHN images next to
50,000 CIFAR images), and data recycling: teachers trained on a seeded half D0 (5,000 images), the
student distilled on D0 (recycle_d0), on D1 alone (recycle_d1, the paper's third recycling variant) or
on D0 u D1, all 10,000 (recycle_d0_d1), and gan (samples of
a small SN-GAN trained on the same 10,000 images: 25 of each batch of 128, 1 synthetic : 4 real,
labelled only by the teachers; the generator is GAN_WORKDIR below, trained first with
`python run.py --config=configs/gan_fashion_mnist.py --workdir=runs/gan_fmnist`; not in VARIANTS, so
the suite's sweep leaves it out: run it with run.py, docs/reproduction.md has the commands).

Step-matched controls: appending OOD images adds steps per epoch (10,000 -> 12,000 images), and D0 u
D1 doubles them against D0, so a data effect and a steps effect are confounded at equal epochs.
baseline_steps_ood is the baseline at ood_cifar10's number of student steps, recycle_d0_steps D0 at
recycle_d0_d1's: the claims compare each data change with the control of the same steps.

C4 (paper Fig. 4 and section 5, 5x ResNet-56 on CIFAR-100): baseline test agreement 84.5 %, MixUp (the
best policy) only 86 %; MixUp raises student accuracy more than agreement; noise and OOD (SVHN) data
lower agreement; distilling on D0 u D1 instead of D0 helps agreement only modestly.

Paper scale (GPU):
  python sweep.py --config=configs/paper/augmentation.py --workdir=runs/augmentation --seeds=0,1,2
  python sweep.py --config=configs/paper/data_recycling.py --workdir=runs/recycling --seeds=0,1,2
Here:
  python sweep.py --config=configs/paper/small/distillation_data.py --workdir=runs/small/data
The CIFAR-10 JPEG archive (../shared/data/cifar10_jpeg_q75.tar.gz) is decoded once (about 20 s) and
cached in ~/.cache/kd_jax.
"""

from configs.paper import with_variant
from configs.paper.small import _base
from kd_jax import config as kd_config

CIFAR10_JPEG = "../shared/data/cifar10_jpeg_q75.tar.gz"
# 2,000 next to 10,000: the original's 10,000 SVHN images next to 50,000 CIFAR images.
OOD_EXAMPLES = 2000
# The gan variant's generator (relative to the repository root, like the data paths): a finished run of
# configs/gan_fashion_mnist.py. Missing, the gan runs stop with a one-line error naming it.
GAN_WORKDIR = "runs/gan_fmnist"

# Student steps of the step-matched controls: (images // batch) x epochs of the variant they match.
OOD_STEPS = (_base.TRAIN_SIZE + OOD_EXAMPLES) // 128 * _base.STUDENT_EPOCHS
D0_D1_STEPS = _base.TRAIN_SIZE // 128 * _base.STUDENT_EPOCHS

OVERRIDES = {
    "baseline": {},
    "mixup": {"distill.augment": "mixup"},
    "noise": {"distill.augment": "noise"},
    "ood_cifar10": {
        "distill.ood_mode": "append", "distill.ood_examples": OOD_EXAMPLES,
        "distill.ood_data": kd_config.data_config(
            name="cifar10", source="image_folder", path=CIFAR10_JPEG, grayscale=True,
            image_size=28)},
    "baseline_steps_ood": {"student.steps": OOD_STEPS},
    "recycle_d0": {"teacher.data_split": "d0", "distill.data_split": "d0"},
    "recycle_d0_steps": {"teacher.data_split": "d0", "distill.data_split": "d0",
                         "student.steps": D0_D1_STEPS},
    "recycle_d1": {"teacher.data_split": "d0", "distill.data_split": "d1"},
    "recycle_d0_d1": {"teacher.data_split": "d0", "distill.data_split": "all"},
    # The original's synth_ratio (configs/paper/augmentation.py:gan) with the laptop generator.
    "gan": {"distill.synthetic_workdir": GAN_WORKDIR, "distill.synthetic_fraction": 0.2},
}
# gan is run by hand after its generator is trained (docs/reproduction.md), so that the suite runs on a
# fresh clone: `python run.py --config=configs/paper/small/distillation_data.py:gan ...`.
VARIANTS = tuple(variant for variant in OVERRIDES if variant != "gan")


def get_config(variant=None):
  config = _base.get_config()
  config.teacher.ensemble_size = 3
  return with_variant(config, OVERRIDES, variant)
