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
