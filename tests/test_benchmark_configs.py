"""configs/benchmark/: every variant builds with the benchmark's recipe and is runnable (the step
runs every method), every one validates with one teacher, the per-pair options are the references'
and each method accepts its options; the laptop file's kd and a feature method run end to end
through a sweep."""

import json

import pytest

from configs.benchmark import cifar100, laptop
from conftest import SHARED_DATA
from kd_jax import config as kd_config
from kd_jax import methods
from kd_jax.experiments import sweep

FILES = (cifar100, laptop)
# Options a method needs from the run (the study passes them; kd_jax/study/student.py).
RUN_OPTIONS = {"dkd": {"steps_per_epoch": 78}, "reviewkd": {"steps_per_epoch": 78},
               "crd": {"num_examples": 50000}}


def _method(variant):
  return variant.rsplit("-", 1)[1]


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.__name__)
def test_variants_are_every_method_on_every_pair_the_runnable_ones_listed(module):
  pairs = module.PAIRS
  assert module.ALL_VARIANTS == tuple(f"{t}-{s}-{m}" for t, s in pairs for m in cifar100.METHODS)
  assert set(cifar100.METHODS) == {"ce", *methods.METHODS}
  runnable = {"ce", *kd_config.DISTILL_METHODS}
  assert module.VARIANTS == tuple(v for v in module.ALL_VARIANTS if _method(v) in runnable)
  assert module.VARIANTS == module.ALL_VARIANTS  # feature methods included
  sweep.load_experiment(module.__file__)  # names that make folders, VARIANTS and get_config


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.__name__)
def test_every_runnable_variant_validates(module):
  for variant in module.VARIANTS:
    kd_config.validate(module.get_config(variant))


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.__name__)
def test_feature_method_variants_validate_with_one_teacher(module):
  for variant in module.ALL_VARIANTS:
    if _method(variant) in kd_config.FEATURE_METHODS:
      config = module.get_config(variant)
      kd_config.validate(config)
      assert config.teacher.ensemble_size == 1  # feature methods distil one teacher


@pytest.mark.parametrize("module", FILES, ids=lambda m: m.__name__)
def test_each_method_takes_its_options(module):
  for variant in module.ALL_VARIANTS:
    config = module.get_config(variant)
    name = _method(variant)
    if name == "ce":
      assert (config.distill.method, config.distill.alpha) == ("paper", 1.0)
      continue
    assert config.distill.method == name
    method = methods.make_method({"name": name, **config.distill.method_options.to_dict(),
                                  **RUN_OPTIONS.get(name, {})})
    for key, value in config.distill.method_options.items():
      assert getattr(method, key) == value, (variant, key)


def test_the_recipe_for_teachers_and_students():
  config = cifar100.get_config("resnet32x4-ShuffleV2-kd")
  for phase, model, lr in (("teacher", "resnet32x4", 0.05), ("student", "ShuffleV2", 0.01)):
    cfg = config[phase]
    assert (cfg.model.name, cfg.epochs, cfg.steps, cfg.batch_size) == (model, 240, 0, 64)
    opt = cfg.optimizer
    assert (opt.name, opt.learning_rate, opt.momentum, opt.nesterov, opt.weight_decay) == (
        "sgd", lr, 0.9, False, 5e-4)
    assert (opt.schedule, tuple(opt.decay_epochs), opt.decay_factor, opt.warmup_epochs) == (
        "step", (150, 180, 210), 0.1, 0.0)
  assert config.teacher.ensemble_size == 1
  assert (config.data.name, config.data.augment, config.distill.augment) == (
      "cifar100", "crop_flip", "")
  assert config.distill.temperature == 4.0 and config.distill.method_options.to_dict() == {}
  assert config.evaluation.every_steps == 50000 // 64  # every epoch
  assert config.evaluation.cka_examples > 0
  assert cifar100.get_config("vgg13-vgg8-kd").student.optimizer.learning_rate == 0.05
  assert cifar100.get_config("vgg13-MobileNetV2-kd").student.optimizer.learning_rate == 0.01


@pytest.mark.parametrize("pair, beta, review_weight", [
    (("resnet56", "resnet20"), 2.0, 0.6), (("resnet110", "resnet32"), 2.0, 1.0),
    (("resnet32x4", "resnet8x4"), 8.0, 5.0), (("wrn_40_2", "wrn_16_2"), 6.0, 5.0),
    (("wrn_40_2", "wrn_40_1"), 6.0, 5.0), (("vgg13", "vgg8"), 6.0, 5.0),
    (("resnet32x4", "ShuffleV1"), 8.0, 5.0), (("resnet32x4", "ShuffleV2"), 8.0, 8.0),
    (("vgg13", "MobileNetV2"), 6.0, 5.0)])
def test_per_pair_weights_are_the_method_docstrings(pair, beta, review_weight):
  dkd = methods.make_method({"name": "dkd", **cifar100.get_config(
      cifar100.variant_name(*pair, "dkd")).distill.method_options.to_dict(), "steps_per_epoch": 1})
  review = methods.make_method({"name": "reviewkd", **cifar100.get_config(
      cifar100.variant_name(*pair, "reviewkd")).distill.method_options.to_dict(),
      "steps_per_epoch": 1})
  assert (dkd.beta, dkd.alpha, dkd.warmup_epochs, dkd.temperature) == (beta, 1.0, 20, 4.0)
  assert review.reviewkd_weight == review_weight
  assert cifar100.get_config(cifar100.variant_name(*pair, "kd")).distill.method_options.to_dict() == {}


def test_the_laptop_benchmark_is_the_recipe_shortened():
  config = laptop.get_config("resnet20-resnet8-dkd")
  assert (config.teacher.model.name, config.student.model.name) == ("resnet20", "resnet8")
  assert (config.data.name, config.data.source, config.data.train_size) == (
      "cifar10", "image_folder", laptop.TRAIN_EXAMPLES)
  assert config.data.path == "../shared/data/cifar10_jpeg_q75.tar.gz"
  for phase in (config.teacher, config.student):
    assert phase.epochs == laptop.EPOCHS and phase.batch_size == 64
    # 150, 180, 210 of 240 at the same fractions of the shorter training.
    assert [e / laptop.EPOCHS for e in phase.optimizer.decay_epochs] == pytest.approx(
        [150 / 240, 180 / 240, 210 / 240], abs=0.5 / laptop.EPOCHS)
  assert config.distill.method_options.to_dict() == {"warmup_epochs": laptop.WARMUP_EPOCHS}
  assert laptop.get_config("resnet20-resnet8-crd").distill.method_options.nce_k == round(
      16384 * laptop.TRAIN_EXAMPLES / 50000)
  assert config.evaluation.every_steps == laptop.TRAIN_EXAMPLES // 64
  with pytest.raises(ValueError, match="is not <teacher>-<student>-<method>"):
    laptop.get_config("resnet56-resnet20-kd")


CIFAR10_JPEG = SHARED_DATA / "cifar10_jpeg_q75.tar.gz"


@pytest.mark.e2e
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=f"needs {CIFAR10_JPEG}")
def test_the_laptop_methods_run_through_a_sweep_with_one_teacher(tmp_path):
  """kd and fitnet (a feature method with its own parameters) for a few steps each on 256 images:
  the sweep trains the teacher once, every run reports its best epoch, and the report has the
  benchmark's table."""
  overrides = [("data.path", str(CIFAR10_JPEG)), ("data.train_size", "256"),
               ("evaluation.test_size", "128"), ("evaluation.cka_examples", "16"),
               ("evaluation.every_steps", "2"), ("teacher.steps", "4"), ("student.steps", "4"),
               ("eval_batch_size", "128")]
  root = tmp_path / "laptop"
  runs = sweep.run_sweep(laptop.__file__, str(root), [0], ",".join(
      f"resnet20-resnet8-{m}" for m in ("kd", "fitnet")), overrides)
  assert [run.provider is None for run in runs] == [True, False]
  for run in runs:
    student = json.loads((root / run.variant / "seed0" / "results.json").read_text())["student"]
    assert student["best_test_accuracy_epoch"] > 0 and 0 <= student["best_test_accuracy"] <= 1
  table = (root / "report" / "benchmark.md").read_text()
  assert all(f"| {m} |" in table for m in ("kd", "fitnet"))
