"""The same study on 1 and on 4 (forced host) devices gives the same loss curve within float tolerance.

Data parallelism must not change the math: the batch is sharded, gradients and BatchNorm statistics are
reduced across devices, so only the order of floating-point sums differs. The model here has BatchNorm
and the data crop+flip augmentation, so both cross-device reductions and on-device augmentation of a
sharded batch are exercised.
"""

import numpy as np
import pytest

from conftest import loss_curves_devices_results, run_cli

pytestmark = pytest.mark.e2e

OVERRIDES = [
    "--config=tests/tiny_config.py",
    "--config.teacher.model.name=preresnet", "--config.teacher.model.depth=8",
    "--config.teacher.model.width=4", "--config.data.augment=crop_flip",
    "--config.log_every_steps=1", "--config.teacher.steps=8", "--config.student.steps=8",
]


def test_one_and_four_devices_give_the_same_loss_curves(tmp_path):
  curves = {}
  for devices in (1, 4):
    workdir = tmp_path / f"d{devices}"
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    result = run_cli([*OVERRIDES, f"--workdir={workdir}"], env_extra=env)
    assert result.returncode == 0, result.stderr
    curves[devices] = loss_curves_devices_results(workdir)
  (one, one_devices, one_results), (four, four_devices, four_results) = curves[1], curves[4]
  assert one_devices == [1] and four_devices == [4]
  assert one.keys() == four.keys() and len(one["student"]) == 8
  for phase in one:
    np.testing.assert_allclose(one[phase], four[phase], rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(one_results["student"]["test_accuracy"],
                             four_results["student"]["test_accuracy"], atol=0.01)
