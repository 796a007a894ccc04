"""kd_jax/study/student.py: the interpolated student's learning rate and its re-estimated BatchNorm
statistics, checked against the original's rule and a closed-form running mean."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_device_data, tiny_config
from kd_jax import parallel, train
from kd_jax.study import student as study_student


@pytest.mark.parametrize("init, lam, scale, expected", [
    ("interpolate", 0.75, True, 0.0125),
    ("interpolate", 1.0, True, 1e-6),  # the floor
    ("interpolate", 0.75, False, 0.05),
    ("random", 0.0, True, 0.05),
    ("teacher_initial", 0.0, True, 0.05),  # the original scales only towards the trained teacher
])
def test_interpolated_student_learning_rate_follows_the_original_rule(init, lam, scale, expected):
  config = tiny_config()
  config.student.init, config.student.init_lambda, config.student.init_scale_lr = init, lam, scale
  cfg = study_student.student_optimizer_config(config)
  assert cfg.learning_rate == pytest.approx(expected, rel=1e-12)
  assert cfg.final_learning_rate <= cfg.learning_rate
  assert config.student.optimizer.learning_rate == 0.05  # the config itself is unchanged


class _NormalizedInputs(nn.Module):
  """BatchNorm straight on the inputs: its running mean has a closed form to check against."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape(x.shape[0], -1)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(10)(x)


def test_batch_stats_reestimation_is_one_epoch_of_running_averages():
  config = tiny_config()
  config.student.batch_size = 64
  mesh = parallel.make_mesh()
  images, labels, data = random_device_data(2, (300, 4, 4, 1), 256, 0.5, 0.25, mesh)
  ctx = types.SimpleNamespace(config=config, teacher_data=data, mesh=mesh,
                              compute_dtype=jnp.float32)
  model = _NormalizedInputs()
  tx = train.make_optimizer(config.student.optimizer, 10, 10)
  state = train.create_state(model, tx, jax.random.PRNGKey(0), (4, 4, 1))
  key = jax.random.PRNGKey(7)
  result = study_student.reestimate_batch_stats(ctx, model, state, key)

  running = np.zeros(16)  # flax initializes the running mean at 0
  for step in range(300 // 64):  # one epoch, the partial batch dropped
    batch, _ = train.sample_batch(key, step, images, labels, 64)
    x = (np.asarray(batch, np.float64).reshape(64, -1) / 255.0 - 0.5) / 0.25
    running = 0.9 * running + 0.1 * x.mean(axis=0)
  np.testing.assert_allclose(result.batch_stats["BatchNorm_0"]["mean"], running, rtol=1e-5,
                             atol=1e-6)
  for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)  # only the statistics change
