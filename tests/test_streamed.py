"""Streamed input (kd_jax/data/stream.py, kd_jax/streamed.py) on a tiny generated dataset.

The dataset: 40 train / 20 test JPEGs of 48-79 x 48-79 pixels (sizes differ, as ImageNet's), 10
classes, written as an image folder and as a tfds array_record dataset (prepared here, without
TensorFlow). Runs are real `python run.py` processes on 16x16 crops with tiny models; one is killed
with SIGKILL at a checkpoint in the middle of an epoch and rerun, and must end with the parameters and
results of an uninterrupted run.
"""

import io
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

from conftest import (kill_when_exists, loss_curves_devices_results, run_cli, run_distributed,
                      start_run, tiny_config)
from kd_jax import config as kd_config
from kd_jax.data import stream

NUM_CLASSES = 10


def _examples(seed, count):
  """Images of varying size whose colour depends on the class, plus noise."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(count):
    label = i % NUM_CLASSES
    height, width = rng.integers(48, 80, size=2)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[..., label % 3] += np.uint8(40 + 18 * label)
    examples.append((image, label))
  return examples


def _jpeg(pixels):
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _write_folder(root, train, test):
  for split, examples in (("train", train), ("val", test)):
    for i, (pixels, label) in enumerate(examples):
      folder = root / split / f"class{label}"
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:03d}.jpg").write_bytes(_jpeg(pixels))
  return root


def _prepare_tfds(data_dir, train, test):
  """An ImageNet-like tfds dataset (JPEG bytes of any size, 'validation' split) as array_record."""
  import tensorflow_datasets as tfds

  class KdJaxTinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(train), "validation": self._generate_examples(test)}

    def _generate_examples(self, examples):
      for i, (pixels, label) in enumerate(examples):
        yield i, {"image": _jpeg(pixels), "label": label}

  KdJaxTinyImagenet(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return "kd_jax_tiny_imagenet"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  """{'image_folder': overrides, 'tfds': overrides} naming the same generated images."""
  root = tmp_path_factory.mktemp("streamed_data")
  train, test = _examples(0, 40), _examples(1, 20)
  folder = _write_folder(root / "folder", train, test)
  name = _prepare_tfds(root / "tfds", train, test)
  return {
      "image_folder": ["--config.data.source=image_folder", f"--config.data.path={folder}",
                       "--config.data.test_split=val"],
      "tfds": ["--config.data.source=tfds", f"--config.data.name={name}",
               f"--config.data.data_dir={root / 'tfds'}", "--config.data.test_split=validation"],
  }


def _data_cfg(overrides):
  cfg = kd_config.default_config().data
  for override in overrides:
    key, value = override[len("--config.data."):].split("=", 1)
    cfg[key] = value
  cfg.name = cfg.name if cfg.source == "tfds" else ""
  return cfg


# ----------------------------------------------------------------------------------------------------
# Host augmentation against direct computations.


def test_crop_boxes_lie_inside_the_image_and_respect_scale_and_ratio():
  rng = np.random.default_rng(0)
  for height, width in ((64, 64), (48, 80), (300, 20), (20, 300), (7, 5)):
    for _ in range(200):
      top, left, h, w = stream.sample_crop_box(rng, height, width)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
  # A sampled (not fallback) box has an area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3],
  # up to rounding; the extreme shapes above fall back to a central crop of the allowed ratio.
  for _ in range(200):
    top, left, h, w = stream.sample_crop_box(rng, 100, 100)
    assert 0.08 * 1e4 * 0.8 <= h * w <= 1e4 and 0.7 <= w / h <= 1.4
  assert stream.sample_crop_box(rng, 300, 20) == ((300 - 27) // 2, 0, 27, 20)


def test_crop_flip_and_center_crop_match_numpy():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  # A box of the output's size is cut out unchanged.
  np.testing.assert_array_equal(stream.crop_resize(image, (3, 7, 16, 16), 16), image[3:19, 7:23])
  # The training transform is the sampled box, resized, then flipped with p = 0.5: replayed here from
  # the same generator state.
  augment = stream.HostAugment(crop_size=16, min_crop_scale=0.08)
  flips = 0
  for seed in range(20):
    out = augment.train(image, np.random.default_rng(seed))
    replay = np.random.default_rng(seed)
    box = stream.sample_crop_box(replay, 40, 50, 0.08)
    expected = stream.crop_resize(image, box, 16)
    flipped = replay.random() < 0.5
    flips += flipped
    np.testing.assert_array_equal(out, expected[:, ::-1] if flipped else expected)
  assert 0 < flips < 20
  # Center crop when the shorter side already has the resize length (round(16 / 0.5) = 32).
  short = rng.integers(0, 256, (32, 45, 1), dtype=np.uint8)
  top, left = int(round((32 - 16) / 2)), int(round((45 - 16) / 2))
  np.testing.assert_array_equal(stream.center_crop(short, 16, 0.5), short[top:top + 16, left:left + 16])
  # Otherwise resized first: shorter side 40 -> 32, the other 50 -> 40.
  resized = np.asarray(PIL.Image.fromarray(image).resize((40, 32), PIL.Image.BILINEAR))
  np.testing.assert_array_equal(stream.center_crop(image, 16, 0.5), resized[8:24, 12:28])


def test_batches_are_a_function_of_the_step_and_split_over_processes(layouts):
  source = stream.open_source(_data_cfg(layouts["image_folder"])).train
  augment = stream.HostAugment(crop_size=16)
  one = stream.train_batches(source, augment, seeds=(1, 2), global_batch=8)
  halves = [stream.train_batches(source, augment, seeds=(1, 2), global_batch=8, process_index=p,
                                 process_count=2) for p in (0, 1)]
  labels = []
  for step in range(10):  # two epochs of 5 steps
    images, step_labels = one[step]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.concatenate([h[step][0] for h in halves]))
    labels.append(step_labels)
  # Each epoch is a permutation of the 40 examples (4 per class), each epoch a different one.
  first, second = np.concatenate(labels[:5]), np.concatenate(labels[5:])
  assert np.bincount(first).tolist() == [4] * 10 == np.bincount(second).tolist()
  assert not np.array_equal(first, second)


def test_tfds_and_folder_layouts_hold_the_same_examples(layouts):
  folder = stream.open_source(_data_cfg(layouts["image_folder"]))
  tfds_source = stream.open_source(_data_cfg(layouts["tfds"]))
  assert len(folder.train) == len(tfds_source.train) == 40 and tfds_source.num_classes == 10

  def key(split):
    return sorted((bytes(split[i][0]), int(split[i][1])) for i in range(len(split)))

  assert key(folder.test) == key(tfds_source.test)


def test_auto_pipeline_streams_images_of_varying_size(layouts):
  cfg = _data_cfg(layouts["tfds"])
  cfg.pipeline = "auto"
  assert stream.in_memory_bytes(cfg) is None and stream.uses_streaming(cfg)
  folder = _data_cfg(layouts["image_folder"])
  assert stream.in_memory_bytes(folder) is None  # images of several sizes
  cfg.source, cfg.pipeline = "digits", "auto"
  assert not stream.uses_streaming(cfg)


# ----------------------------------------------------------------------------------------------------
# Runs.

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
  teacher = build_model(kd_config.model_config(name="preresnet", depth=8, width=4), NUM_CLASSES)
  student = build_model(kd_config.model_config(name="mlp", width=16), NUM_CLASSES)
  source = stream.open_source(_data_cfg(layout_overrides))
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


@pytest.mark.parametrize("layout,checkpoint", [("image_folder", "student/8"),
                                               ("tfds", "teachers/train_0-1/8")])
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


# ----------------------------------------------------------------------------------------------------
# ResNet-50 (shapes only: nothing runs at 224 x 224).


def test_resnet50_has_torchvisions_parameter_count():
  from kd_jax.models import build_model, param_count
  model = build_model(kd_config.model_config(name="resnet50"), 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3)),
                                                train=False))
  assert param_count(variables["params"]) == 25_557_032
  # 53 BatchNorm layers (stem, 3 per block, 4 projection shortcuts), each with a mean and a variance.
  assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * 53
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables,
      jax.ShapeDtypeStruct((2, 224, 224, 3), np.float32))
  assert [state["intermediates"][f"stage{i}"][0].shape for i in (1, 2, 3, 4)] == [
      (2, 56, 56, 256), (2, 28, 28, 512), (2, 14, 14, 1024), (2, 7, 7, 2048)]


def test_stream_benchmark_reads_its_jpegs(tmp_path):
  from benchmarks import stream as stream_benchmark
  stream_benchmark.write_jpegs(str(tmp_path), 20, 24, classes=4)
  assert stream_benchmark.input_rate(str(tmp_path), 16, 8, threads=2, batches=2) > 0


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
