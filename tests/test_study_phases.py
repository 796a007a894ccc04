"""kd_jax/study/phases.py: the teacher's and the distillation's augmentation policies."""

import jax
import numpy as np

from conftest import tiny_config
from kd_jax.study import phases


def test_teacher_augmentation_ignores_the_distillation_options():
  images = np.random.default_rng(9).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  key = jax.random.PRNGKey(0)
  outputs = {}
  for degrees in (10.0, 90.0):
    config = tiny_config()
    config.data.augment = "rotate"
    config.distill.rotate_degrees = degrees
    outputs[degrees] = (phases.teacher_policy(config)(key, images),
                        phases.distillation_policy(config)(key, images))
  np.testing.assert_array_equal(outputs[10.0][0], outputs[90.0][0])
  assert not np.array_equal(outputs[10.0][1], outputs[90.0][1])
