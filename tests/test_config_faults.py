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
