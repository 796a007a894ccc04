"""kd_jax/config.py under faults: values once accepted that silently meant something else."""

import pytest

from kd_jax import KdJaxError
from kd_jax import config as config_lib


@pytest.mark.parametrize("phase", ["teacher", "student"])
def test_negative_steps_are_refused(phase):
  config = config_lib.default_config()
  config[phase].steps = -1
  with pytest.raises(KdJaxError, match=rf"config\.{phase}\.steps=-1 must be >= 0"):
    config_lib.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("schedule", "linear", r"config\.student\.optimizer\.schedule='linear' is not valid; choose "
                           r"one of cosine, step"),
    ("decay_epochs", (180, 150), r"decay_epochs=\(180, 150\) must be increasing epochs > 0"),
    ("decay_epochs", (), r"decay_epochs=\(\) must be increasing"),
    ("decay_epochs", (0, 10), r"must be increasing epochs > 0"),
    ("decay_epochs", (150, 300), r"must end before config\.student\.epochs=300"),
    ("decay_factor", 0.0, r"decay_factor=0\.0 must lie in \(0, 1\]"),
    ("decay_factor", 2.0, r"decay_factor=2\.0 must lie in \(0, 1\]"),
    ("warmup_epochs", -1.0, r"warmup_epochs=-1\.0 must be >= 0"),
])
def test_bad_step_schedules_are_one_line_errors(field, value, message):
  config = config_lib.default_config()
  config.student.optimizer.schedule = "step"
  if field == "schedule":
    config.student.optimizer.schedule = value
  else:
    config.student.optimizer[field] = value
  with pytest.raises(KdJaxError, match=message) as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value)


def test_a_step_schedule_inside_the_phase_validates():
  config = config_lib.default_config()
  config.student.optimizer.schedule = "step"
  config.student.epochs = 240
  config_lib.validate(config)
  config.student.steps = 100  # steps override epochs: the epochs' length is known only with the data
  config.student.optimizer.decay_epochs = (500, 600)
  config_lib.validate(config)


def _feature_config(method="fitnet"):
  config = config_lib.default_config()
  config.teacher.model = config_lib.model_config(name="resnet32x4")
  config.student.model = config_lib.model_config(name="resnet8x4")
  config.teacher.ensemble_size = 1
  config.distill.method = method
  return config


@pytest.mark.parametrize("change, message", [
    (lambda c: c.teacher.update(ensemble_size=3),
     r"distils the features of one teacher; set config\.teacher\.ensemble_size=1"),
    (lambda c: c.student.model.update(name="preresnet"),
     r"config\.student\.model\.name='preresnet' does not return; use a CIFAR-zoo model"),
    (lambda c: c.teacher.model.update(name="ShuffleV2") or c.distill.update(method="ofd"),
     r"config\.distill\.method='ofd' takes its margins .*'ShuffleV2' does not have"),
    (lambda c: c.distill.update(method="crd", ood_mode="replace", ood_ratio=0.25,
                                ood_data=config_lib.data_config(name="svhn_cropped")),
     r"'crd' keeps a memory row .* use ood_mode='append'"),
])
def test_feature_methods_refuse_what_they_cannot_run_in_one_line(change, message):
  config = _feature_config()
  change(config)
  with pytest.raises(KdJaxError, match=message) as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value)


def test_every_feature_method_validates_on_zoo_models_and_skips_cached_logits():
  from kd_jax.study import phases  # pylint: disable=g-import-not-at-top (JAX)
  for method in config_lib.FEATURE_METHODS:
    config = _feature_config(method)
    config.data.augment = "none"  # images that never change: logit methods would cache
    config_lib.validate(config)
    assert not phases.caches_teacher_logits(config)
  config.distill.method = "kd"
  assert phases.caches_teacher_logits(config)


def test_streamed_input_refuses_crd_in_one_line():
  from kd_jax.study import streamed  # pylint: disable=g-import-not-at-top (JAX)
  config = _feature_config("crd")
  config.evaluation.augmented_batches = 0  # streamed runs have no augmented-fidelity batches
  with pytest.raises(KdJaxError, match=r"'crd' .* streamed batches do not carry") as error:
    streamed.check_config(config)
  assert "\n" not in str(error.value)
  config.distill.method = "fitnet"
  streamed.check_config(config)
