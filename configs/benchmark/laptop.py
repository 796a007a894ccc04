"""The CIFAR-100 distillation benchmark (configs/benchmark/cifar100.py) sized down for a 2-core CPU:
every method on one small pair, a resnet20 teacher -> a resnet8 student (the references' smallest
CIFAR ResNet), on the first TRAIN_EXAMPLES images of CIFAR-10 (the JPEG archive in ../shared/data,
relative to the repository root; class-balanced, kd_jax/data/sources.py) and its whole 10,000-image
test set.

The recipe is the benchmark's (SGD momentum 0.9, weight decay 5e-4, batch 64, lr 0.05, random crop
+ flip, tau 4, one teacher, the student evaluated every epoch), shortened to EPOCHS epochs for
teacher and student with the step schedule's decays at the same fractions of training (150, 180,
210 of 240 -> DECAY_EPOCHS). The methods' options are their CIFAR-100 defaults, except what counts
epochs or the training set, scaled to this size (SCALED_OPTIONS): DKD's and ReviewKD's 20 warm-up
epochs of 240 (-> WARMUP_EPOCHS) and CRD's 16,384 negatives of 50,000 images (-> CRD_NEGATIVES).
This pair is none of the references' pairs, so no per-pair weight applies: DKD keeps beta 8 and
ReviewKD weight 5, their defaults. Variants are `resnet20-resnet8-<method>`, one per method.

  python sweep.py --config=configs/benchmark/laptop.py --workdir=runs/benchmark/laptop --seeds=0,1,2
  python sweep.py --config=configs/benchmark/laptop.py --workdir=runs/benchmark/laptop --report-only

The sweep trains one teacher per seed (the first run) and every other run of that seed loads it.
How long it takes, and how that was measured, is in docs/methods.md.
"""

from configs.benchmark import cifar100
from kd_jax import config as kd_config

CIFAR10_JPEG = "../shared/data/cifar10_jpeg_q75.tar.gz"
TRAIN_EXAMPLES = 4000
EPOCHS = 8
# 150, 180, 210 of 240 epochs: 0.625, 0.75 and 0.875 of training.
DECAY_EPOCHS = tuple(round(EPOCHS * e / cifar100.EPOCHS) for e in cifar100.DECAY_EPOCHS)
WARMUP_EPOCHS = max(1, round(EPOCHS * 20 / cifar100.EPOCHS))
CRD_NEGATIVES = round(16384 * TRAIN_EXAMPLES / cifar100.TRAIN_EXAMPLES)
SCALED_OPTIONS = {"dkd": {"warmup_epochs": WARMUP_EPOCHS},
                  "reviewkd": {"warmup_epochs": WARMUP_EPOCHS},
                  "crd": {"nce_k": CRD_NEGATIVES}}
CKA_EXAMPLES = 500
TEST_EXAMPLES = 2000  # the first 2,000 test images (200 per class): evaluated every epoch
PAIRS = (("resnet20", "resnet8"),)
ALL_VARIANTS = cifar100.variants(PAIRS)
VARIANTS = tuple(v for v in ALL_VARIANTS if cifar100.runnable(v.rsplit("-", 1)[1]))


def get_config(variant=None):
  teacher, student, method = cifar100.parse_variant(variant, PAIRS)
  config = cifar100.benchmark_config(
      teacher, student, method, epochs=EPOCHS, decay_epochs=DECAY_EPOCHS,
      train_examples=TRAIN_EXAMPLES,
      options=cifar100.method_options(method, (teacher, student), SCALED_OPTIONS))
  config.data = kd_config.data_config(name="cifar10", source="image_folder", path=CIFAR10_JPEG,
                                      train_size=TRAIN_EXAMPLES)
  config.data.augment = "crop_flip"
  config.data.split_seed = 0
  config.evaluation.cka_examples = CKA_EXAMPLES
  config.evaluation.test_size = TEST_EXAMPLES
  config.evaluation.augmented_batches = 0  # fidelity on augmented batches: not part of this table
  config.evaluation.compression = False  # the same student in every run: nothing to compare
  return config
