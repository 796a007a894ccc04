"""JAX's own multi-process runtime: 2 processes x 2 CPU devices train like 1 process x 4 devices.

This is the path of multi-host TPU slices and GPU clusters (`run.py --distributed`): every process holds
the dataset, the global batch is sharded over all processes' devices, and process 0 alone writes the
workdir's files while Orbax coordinates the checkpoints.
"""

import numpy as np
import pytest

from conftest import loss_curves_devices_results, run_cli, run_distributed

pytestmark = pytest.mark.e2e

ARGS = ["--config=tests/tiny_config.py", "--config.log_every_steps=1",
        "--config.teacher.steps=6", "--config.student.steps=6"]


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  single = tmp_path / "single"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  result = run_cli([*ARGS, f"--workdir={single}"], env_extra=env)
  assert result.returncode == 0, result.stderr

  multi = tmp_path / "multi"
  returncodes, outputs = run_distributed([*ARGS, f"--workdir={multi}"], num_processes=2,
                                         devices_per_process=2)
  assert returncodes == [0, 0], outputs

  (one, one_devices, one_results) = loss_curves_devices_results(single)
  (two, two_devices, two_results) = loss_curves_devices_results(multi)
  assert one_devices == [4] and two_devices == [4]  # one start record, from process 0 only
  assert one.keys() == two.keys()
  for phase in one:
    np.testing.assert_allclose(one[phase], two[phase], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(one_results["student"]["test_agreement"],
                             two_results["student"]["test_agreement"], atol=1e-6)
