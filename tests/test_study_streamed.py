"""Streamed studies (kd_jax/study/streamed.py) on conftest's tiny generated dataset (`layouts`).

Runs are real `python run.py` processes on 16x16 crops with tiny models; one is killed with SIGKILL at
a checkpoint in the middle of an epoch and rerun, and must end with the parameters and results of an
uninterrupted run.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (SLOW, STREAM_NUM_CLASSES, kill_when_exists, loss_curves_devices_results,
                      run_cli, run_distributed, start_run, stream_data_cfg, tiny_config)
from kd_jax import config as kd_config
from kd_jax.data import stream


RUN = ["--config=tests/tiny_config.py", "--config.data.name=", "--config.data.pipeline=stream",
       "--config.data.stream.crop_size=16", "--config.data.stream.threads=2",
       "--config.data.stream.statistics_examples=16", "--config.evaluation.augmented_batches=0",
       "--config.teacher.model.name=preresnet", "--config.teacher.model.depth=8",
       "--config.teacher.model.width=4", "--config.student.model.width=16",
       "--config.teacher.batch_size=8", "--config.student.batch_size=8", "--config.eval_batch_size=16",
       "--config.log_every_steps=1"]
# 40 images, batch 8: 5 steps per epoch; a checkpoint every 4 steps, so step 8 is mid-epoch.


def _params(workdir):
  params = [ocp.StandardCheckpointer().restore(os.path.join(workdir, f"teachers/member_{i}"))["params"]
            for i in (0, 1)]
  manager = ocp.CheckpointManager(os.path.join(workdir, "student"), item_names=("state", "data"))
  state_only = ocp.args.Composite(state=ocp.args.StandardRestore())
  params.append(manager.restore(manager.latest_step(), args=state_only)["state"]["params"])
  manager.close()
  return params


def _killed_at(args, workdir, checkpoint):
  kill_when_exists(workdir / checkpoint / "_CHECKPOINT_METADATA",
                   start_run([*args, f"--workdir={workdir}"]))
  assert not (workdir / "results.json").exists()


def _check_evaluation_against_direct_computation(workdir, layout_overrides, results):
  """The streamed evaluation (batches of 16 over 20 test images: 12 padding rows, sharded, reduced
  on the host) against the trained models applied to all center crops at once, summarized by
  kd_jax.metrics."""
  from kd_jax import losses, metrics
  from kd_jax.models import build_model
  config = kd_config.default_config()
  teacher = build_model(kd_config.model_config(name="preresnet", depth=8, width=4), STREAM_NUM_CLASSES)
  student = build_model(kd_config.model_config(name="mlp", width=16), STREAM_NUM_CLASSES)
  source = stream.open_source(stream_data_cfg(layout_overrides))
  augment = stream.HostAugment(crop_size=16)
  mean, std = stream.channel_statistics(source.train, augment, 16,
                                        stream.stream_seeds(config.seed, 2)[0], threads=2)
  crops = np.stack([augment.evaluate(source.test[i][0]) for i in range(len(source.test))])
  labels = np.asarray([source.test[i][1] for i in range(len(source.test))])
  x = ((crops / 255.0 - mean.astype(np.float32)) / (std + 1e-8).astype(np.float32)).astype(np.float32)
  members = [ocp.StandardCheckpointer().restore(str(workdir / f"teachers/member_{i}")) for i in (0, 1)]
  member_logits = np.stack([teacher.apply(v, x, train=False) for v in members])
  ensemble_logits = losses.ensemble_log_probs(member_logits)
  manager = ocp.CheckpointManager(workdir / "student", item_names=("state", "data"))
  state = manager.restore(manager.latest_step(),
                          args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  student_logits = student.apply({"params": state["params"]}, x, train=False)
  expected = metrics.summarize(metrics.per_example(student_logits, labels,
                                                   teacher_logits=ensemble_logits))
  for key, value in expected.items():
    np.testing.assert_allclose(results["student"][f"test_{key}"], value, rtol=1e-5, atol=1e-6)
  expected = metrics.summarize(metrics.per_example(ensemble_logits, labels))
  for key, value in expected.items():
    np.testing.assert_allclose(results["ensemble"][f"test_{key}"], value, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
# The tfds layout killed in the teachers' phase reads through the same grain position as the image
# folder; it runs with KD_JAX_SLOW_TESTS=1 (tests/test_study_resume.py kills in-memory teachers).
@pytest.mark.parametrize("layout,checkpoint", [
    ("image_folder", "student/8"), pytest.param("tfds", "teachers/train_0-1/8", marks=SLOW)])
def test_killed_streamed_run_resumes_to_the_same_result(tmp_path, layouts, layout, checkpoint):
  args = [*RUN, *layouts[layout]]
  uninterrupted = run_cli([*args, f"--workdir={tmp_path / 'uninterrupted'}"])
  assert uninterrupted.returncode == 0, uninterrupted.stderr
  assert "streamed (40 train / 20 test" in uninterrupted.stdout
  with open(tmp_path / "uninterrupted" / checkpoint / "data" / "process_0-of-1.json") as f:
    assert json.load(f) == {"next_index": 8}  # the position saved is the saved step's

  _killed_at(args, tmp_path / "interrupted", checkpoint)
  resumed = run_cli([*args, f"--workdir={tmp_path / 'interrupted'}"])
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming at step 8/12 (data position 8)" in resumed.stdout
  for a, b in zip(_params(tmp_path / "uninterrupted"), _params(tmp_path / "interrupted")):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  results = [json.loads((tmp_path / w / "results.json").read_text())
             for w in ("uninterrupted", "interrupted")]
  assert results[0] == results[1]
  if layout == "image_folder":
    _check_evaluation_against_direct_computation(tmp_path / "uninterrupted", layouts[layout],
                                                 results[0])
    # Two forced CPU devices: the same batches, sharded; the same loss curves up to float rounding.
    two = tmp_path / "two_devices"
    result = run_cli([*args, f"--workdir={two}"],
                     env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                                "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    one_curves, one_devices, _ = loss_curves_devices_results(tmp_path / "uninterrupted")
    two_curves, two_devices, two_results = loss_curves_devices_results(two)
    assert one_devices == [1] and two_devices == [2] and len(one_curves["student"]) == 12
    for phase in one_curves:
      np.testing.assert_allclose(one_curves[phase], two_curves[phase], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(results[0]["student"]["test_accuracy"],
                               two_results["student"]["test_accuracy"], atol=0.051)


@pytest.mark.e2e
def test_unsupported_options_are_one_line_errors(tmp_path, layouts):
  result = run_cli([*RUN, *layouts["image_folder"], "--config.evaluation.cka_examples=8",
                    f"--workdir={tmp_path / 'w'}"])
  assert result.returncode == 2 and "cka_examples is not available with streamed input" in result.stderr
  assert not (tmp_path / "w").exists()


def test_synthetic_distillation_data_is_refused_on_streamed_input():
  from kd_jax.study import streamed  # pylint: disable=import-outside-toplevel
  from kd_jax.errors import KdJaxError  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.evaluation.augmented_batches = 0  # (tiny_config's; not available on streamed input either)
  streamed.check_config(config)
  config.distill.synthetic_workdir = "runs/gan"
  with pytest.raises(KdJaxError, match="synthetic_workdir is not available with streamed input"):
    streamed.check_config(config)


@pytest.mark.e2e
@pytest.mark.skipif(os.environ.get("KD_JAX_SLOW_TESTS") != "1",
                    reason="multi-process streamed run (~40 s); KD_JAX_SLOW_TESTS=1 runs it")
def test_two_processes_read_their_rows_and_train_like_one(tmp_path, layouts):
  """2 processes x 1 device (each reading only its rows of every batch, each saving its own grain
  position) train exactly like 1 process x 2 devices."""
  args = [*RUN, *layouts["image_folder"]]
  single = tmp_path / "single"
  result = run_cli([*args, f"--workdir={single}"],
                   env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                              "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr
  multi = tmp_path / "multi"
  returncodes, outputs = run_distributed([*args, f"--workdir={multi}"], num_processes=2,
                                         devices_per_process=1)
  assert returncodes == [0, 0], outputs
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(multi / "student" / "8" / "data"))
  one, _, one_results = loss_curves_devices_results(single)
  two, _, two_results = loss_curves_devices_results(multi)
  assert one == two and one_results == two_results


def test_imagenet_config_is_the_papers_recipe_and_streams():
  from configs import imagenet_kd
  from kd_jax.study import streamed
  assert imagenet_kd.VARIANTS == ("m1", "m3", "m5") and "python run.py" in imagenet_kd.__doc__
  for m, variant in zip((1, 3, 5), imagenet_kd.VARIANTS):
    config = imagenet_kd.get_config(variant)
    kd_config.validate(config)
    streamed.check_config(config)  # nothing it sets is unavailable on streamed input
    assert config.teacher.ensemble_size == m
    for phase in ("teacher", "student"):
      cfg = config[phase]
      assert (cfg.epochs, cfg.batch_size, cfg.model.name) == (90, 1024, "resnet50")
      assert (cfg.optimizer.learning_rate, cfg.optimizer.warmup_epochs) == (0.1, 5.0)
    assert config.student.optimizer.weight_decay == 0.0 < config.teacher.optimizer.weight_decay


def test_unitcube_normalization_maps_streamed_images_to_minus_one_one(layouts):
  """data.normalization='unitcube' (the original code's 2 x - 1) holds for streamed input as for
  in-memory runs: mean and std 0.5 per channel instead of measured statistics."""
  from kd_jax import parallel
  from kd_jax.study import streamed
  config = kd_config.default_config()
  config.data = stream_data_cfg(layouts["image_folder"])
  config.data.stream.crop_size = 16
  config.data.normalization = "unitcube"
  data = streamed.StreamedData(config, stream.open_source(config.data), parallel.make_mesh())
  for values in data.statistics:
    np.testing.assert_array_equal(values, [0.5, 0.5, 0.5])
  config.data.normalization = "standardize"
  measured = streamed.StreamedData(config, stream.open_source(config.data), parallel.make_mesh())
  assert not np.allclose(measured.statistics[0], 0.5)
