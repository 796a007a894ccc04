"""Data parallelism does not change the math: the same study on 1 and on 4 (forced host) devices, and
as 2 processes x 2 devices through JAX's own multi-process runtime, gives the same loss curves.

The batch is sharded, gradients and BatchNorm statistics are reduced across devices, so only the order
of floating-point sums differs. The model here has BatchNorm and the data crop+flip augmentation, so
both cross-device reductions and on-device augmentation of a sharded batch are exercised.

`run.py --distributed` is the path of multi-host TPU slices and GPU clusters: every process holds the
dataset, the global batch is sharded over all processes' devices, and process 0 alone writes the
workdir's files while Orbax coordinates the checkpoints.
"""

import numpy as np
import pytest

from conftest import loss_curves_devices_results, run_cli, run_distributed

pytestmark = pytest.mark.e2e

OVERRIDES = [
    "--config=tests/tiny_config.py",
    "--config.teacher.model.name=preresnet", "--config.teacher.model.depth=8",
    "--config.teacher.model.width=4", "--config.data.augment=crop_flip",
    "--config.log_every_steps=1", "--config.teacher.steps=8", "--config.student.steps=8",
]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  """{devices: (loss curves, device counts of the start records, results)} for 1 and 4 devices."""
  runs = {}
  for devices in (1, 4):
    workdir = tmp_path_factory.mktemp(f"d{devices}")
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    result = run_cli([*OVERRIDES, f"--workdir={workdir}"], env_extra=env)
    assert result.returncode == 0, result.stderr
    runs[devices] = loss_curves_devices_results(workdir)
  return runs


def test_one_and_four_devices_give_the_same_loss_curves(single_process):
  (one, one_devices, one_results), (four, four_devices, four_results) = (single_process[1],
                                                                        single_process[4])
  assert one_devices == [1] and four_devices == [4]
  assert one.keys() == four.keys() and len(one["student"]) == 8
  for phase in one:
    np.testing.assert_allclose(one[phase], four[phase], rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(one_results["student"]["test_accuracy"],
                             four_results["student"]["test_accuracy"], atol=0.01)


def test_two_processes_match_one_process_with_as_many_devices(single_process, tmp_path):
  multi = tmp_path / "multi"
  returncodes, outputs = run_distributed([*OVERRIDES, f"--workdir={multi}"], num_processes=2,
                                         devices_per_process=2)
  assert returncodes == [0, 0], outputs
  one, one_devices, one_results = single_process[4]
  two, two_devices, two_results = loss_curves_devices_results(multi)
  assert one_devices == [4] and two_devices == [4]  # one start record, from process 0 only
  assert one.keys() == two.keys()
  for phase in one:
    np.testing.assert_allclose(one[phase], two[phase], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(one_results["student"]["test_agreement"],
                             two_results["student"]["test_agreement"], atol=1e-6)
