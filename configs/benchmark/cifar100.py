"""The CIFAR-100 distillation benchmark at the published scale: every method on the nine teacher ->
student pairs of CRD (Tian et al. 2020) / RepDistiller / mdistiller (DKD, Zhao et al. 2022), one
teacher per student (teacher.ensemble_size = 1), with the recipe those codebases use for students and
teachers alike (RepDistiller's train_teacher.py and train_student.py, mdistiller's CFG.SOLVER):

  SGD momentum 0.9 (not Nesterov), weight decay 5e-4 (coupled, as PyTorch's), batch 64, 240 epochs,
  learning rate 0.05 (0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2 students) times 0.1 at epochs 150,
  180 and 210 (optimizer.schedule = 'step'); random crop (pad 4) + horizontal flip for teachers and
  students; tau 4; the student's test accuracy evaluated every epoch (781 steps at batch 64; the
  references' loaders keep the last partial batch, 782 steps, where kd_jax drops it).

Variants are `<teacher>-<student>-<method>` (VARIANTS lists the ones this kd_jax can run, today
every name of ALL_VARIANTS). Methods: `ce` (the student on the labels alone, the tables' "student" column: the
paper objective with alpha = 1) and the methods of kd_jax/methods/, each with its reference's CIFAR-100
defaults (the module docstrings give the formulas, sources and defaults): kd (CE 0.1 + KD 0.9), dkd,
dist, fitnet, at, sp, cc, vid, rkd, pkt, nst, crd, ofd, reviewkd. The fused step feeds the feature
methods both networks' stage features and trains their own parameters with the student's.

Per-pair loss weights, where a method module's docstring states them (PAIR_OPTIONS):
  dkd beta: 2 for resnet56 -> resnet20 and resnet110 -> resnet32; 6 for vgg13 -> vgg8, vgg13 ->
    MobileNetV2, wrn_40_2 -> wrn_16_2 and wrn_40_2 -> wrn_40_1; 8 (the default) for resnet32x4 ->
    resnet8x4, ShuffleV1 and ShuffleV2 (mdistiller configs/cifar100/dkd/*.yaml); 20 warm-up epochs.
  reviewkd weight: 0.6 for resnet56 -> resnet20, 1 for resnet110 -> resnet32, 8 for resnet32x4 ->
    ShuffleV2, 5 (the default) for every other pair (ReviewKD's script/reviewKD.sh, mdistiller
    configs/cifar100/reviewkd.yaml). resnet32x4 -> ShuffleV1 and the WRN / VGG / MobileNetV2 pairs
    keep 5: no docstring here states their value.
  Every other method keeps its default on every pair: no kd_jax docstring (nor PAPER.md) gives
  per-pair values for them. CRD's memory bank holds all 50,000 training images (nce_k 16384).

Published numbers to compare with (../shared/PAPER.md; CIFAR-100 top-1 %, teacher / student alone /
KD / CRD / DKD): resnet56 -> resnet20 72.34 / 69.06 / 70.66 / 71.16 / 71.97; resnet110 -> resnet32
74.31 / 71.14 / 73.08 / 73.48 / 74.11; resnet32x4 -> resnet8x4 79.42 / 72.50 / 73.33 / 75.51 / 76.32;
wrn_40_2 -> wrn_16_2 75.61 / 73.26 / 74.92 / 75.48 / 76.23; vgg13 -> vgg8 74.64 / 70.36 / 72.98 /
73.94 / 74.68; resnet32x4 -> ShuffleV2 79.42 / 71.82 / 74.45 / 75.65 / 77.07. RepDistiller (CRD's
paper) reports the last epoch, mdistiller (DKD's) the best epoch averaged over 5 runs: the report
shows both, labelled (student.test_accuracy and student.best_test_accuracy). No published table
gives teacher-student agreement or KL for these methods; the report adds them.

Commands (GPU). A sweep trains each teacher once per seed (the first run of its pair) and the other
students of that teacher and seed load it (teacher.load_from, set by the sweep):

  python sweep.py --config=configs/benchmark/cifar100.py --workdir=runs/benchmark/cifar100 --seeds=0,1,2
  python sweep.py --config=configs/benchmark/cifar100.py --workdir=runs/benchmark/cifar100 --dry-run
  # one pair (its teacher trained by its first run):
  python sweep.py --config=configs/benchmark/cifar100.py --workdir=runs/benchmark/cifar100 \
      --variants=resnet32x4-resnet8x4-ce,resnet32x4-resnet8x4-kd,resnet32x4-resnet8x4-dkd
  # one run, then another student of the same trained teacher:
  python run.py --config=configs/benchmark/cifar100.py:resnet56-resnet20-kd --workdir=runs/b/kd
  python run.py --config=configs/benchmark/cifar100.py:resnet56-resnet20-dkd --workdir=runs/b/dkd \
      --config.teacher.load_from=runs/b/kd
  # the references' published PyTorch teachers instead (python -m kd_jax.import_teacher --help):
  python -m kd_jax.import_teacher --torch=PATH/TO/resnet32x4.pth --arch=resnet32x4 \
      --out=runs/teachers/resnet32x4
  python sweep.py --config=configs/benchmark/cifar100.py --workdir=runs/benchmark/imported \
      --variants=resnet32x4-resnet8x4-kd,resnet32x4-resnet8x4-dkd \
      --config.teacher.load_from=runs/teachers/resnet32x4
  python sweep.py --config=configs/benchmark/cifar100.py --workdir=runs/benchmark/cifar100 --report-only

evaluation.every_steps is one epoch at batch 64; with another --config.student.batch_size set it to
50000 // batch_size for evaluations at the epochs' ends.
"""

import ml_collections

from kd_jax import config as kd_config

TRAIN_EXAMPLES = 50000
EPOCHS = 240
DECAY_EPOCHS = (150, 180, 210)
DECAY_FACTOR = 0.1
BATCH_SIZE = 64
LEARNING_RATE = 0.05
# Students whose references train at 0.01 (RepDistiller train_student.py: MobileNetV2, ShuffleV1,
# ShuffleV2; PAPER.md "0.01 for MobileNet/ShuffleNet").
SMALL_LEARNING_RATE = 0.01
SMALL_LEARNING_RATE_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9
TEMPERATURE = 4.0
CKA_EXAMPLES = 1000  # linear CKA of each shared stage, teacher vs student, on the first test images

PAIRS = (
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2"),
)
# 'ce': the student alone, on the labels (no distillation term).
BASELINE = "ce"
LOGIT_METHODS = ("kd", "dkd", "dist")
METHODS = (BASELINE, *LOGIT_METHODS, *kd_config.FEATURE_METHODS)
# Per-pair options that the method modules' docstrings state (see the module docstring).
PAIR_OPTIONS = {
    "dkd": {("resnet56", "resnet20"): {"beta": 2.0}, ("resnet110", "resnet32"): {"beta": 2.0},
            ("vgg13", "vgg8"): {"beta": 6.0}, ("vgg13", "MobileNetV2"): {"beta": 6.0},
            ("wrn_40_2", "wrn_16_2"): {"beta": 6.0}, ("wrn_40_2", "wrn_40_1"): {"beta": 6.0}},
    "reviewkd": {("resnet56", "resnet20"): {"reviewkd_weight": 0.6},
                 ("resnet110", "resnet32"): {"reviewkd_weight": 1.0},
                 ("resnet32x4", "ShuffleV2"): {"reviewkd_weight": 8.0}},
}


def variant_name(teacher: str, student: str, method: str) -> str:
  return f"{teacher}-{student}-{method}"


def parse_variant(variant, pairs=PAIRS) -> tuple:
  """'resnet56-resnet20-kd' -> ('resnet56', 'resnet20', 'kd') for a pair of `pairs` and a method of
  METHODS; ValueError (one line, listing the form) for any other name."""
  parts = tuple(str(variant).split("-"))
  if len(parts) != 3 or parts[:2] not in pairs or parts[2] not in METHODS:
    raise ValueError(f"variant {variant!r} is not <teacher>-<student>-<method> of this file; pass "
                     f"--config=<file>.py:<variant>, e.g. {variant_name(*pairs[0], 'kd')} (methods: "
                     f"{', '.join(METHODS)})")
  return parts


def runnable(method: str) -> bool:
  """Whether this kd_jax's fused step runs `method` (config.DISTILL_METHODS, or the baseline)."""
  return method == BASELINE or method in kd_config.DISTILL_METHODS


def variants(pairs, methods=METHODS) -> tuple:
  return tuple(variant_name(t, s, m) for t, s in pairs for m in methods)


ALL_VARIANTS = variants(PAIRS)
VARIANTS = tuple(v for v in ALL_VARIANTS if runnable(v.rsplit("-", 1)[1]))


def phase_optimizer(model: str, epochs: int, decay_epochs) -> ml_collections.ConfigDict:
  """The recipe's SGD with its step schedule, at 0.01 for the small models' references."""
  return kd_config.optimizer_config(
      name="sgd", schedule="step", decay_epochs=tuple(decay_epochs), decay_factor=DECAY_FACTOR,
      learning_rate=SMALL_LEARNING_RATE if model in SMALL_LEARNING_RATE_MODELS else LEARNING_RATE,
      momentum=MOMENTUM, nesterov=False, weight_decay=WEIGHT_DECAY)


def method_options(method: str, pair: tuple, scale: dict = None) -> dict:
  """The method's options for `pair`: its defaults (empty) plus PAIR_OPTIONS; `scale` ({option:
  value}) adds options of a sized-down benchmark for the methods that have them."""
  options = dict(PAIR_OPTIONS.get(method, {}).get(tuple(pair), {}))
  options.update((scale or {}).get(method, {}))
  return options


def benchmark_config(teacher: str, student: str, method: str, *, epochs: int = EPOCHS,
                     decay_epochs=DECAY_EPOCHS, train_examples: int = TRAIN_EXAMPLES,
                     options: dict = None) -> ml_collections.ConfigDict:
  """One run of the benchmark: `teacher` -> `student` with `method`, teacher and student both on
  the recipe for `epochs` epochs of `train_examples` images, evaluated every epoch; CIFAR-100 data
  (a sized-down file replaces config.data). `options`: the method's options (method_options)."""
  config = kd_config.default_config()
  config.data = kd_config.data_config(name="cifar100", source="auto")
  config.data.augment = "crop_flip"  # random crop (pad 4) + horizontal flip
  config.data.split_seed = 0
  for phase, model in ((config.teacher, teacher), (config.student, student)):
    phase.model = kd_config.model_config(name=model)
    phase.epochs = epochs
    phase.batch_size = BATCH_SIZE
    phase.optimizer = phase_optimizer(model, epochs, decay_epochs)
  config.teacher.ensemble_size = 1
  config.distill.temperature = TEMPERATURE
  if method == BASELINE:
    config.distill.method, config.distill.alpha = "paper", 1.0
  else:
    config.distill.method = method
    config.distill.method_options = ml_collections.ConfigDict(options or {})
  config.evaluation.every_steps = train_examples // BATCH_SIZE  # every epoch
  config.evaluation.cka_examples = CKA_EXAMPLES
  return config


def get_config(variant=None):
  teacher, student, method = parse_variant(variant)
  return benchmark_config(teacher, student, method,
                          options=method_options(method, (teacher, student)))
