"""Shared helpers: tiny configs on scikit-learn digits, a way to run `run.py` as a user would, device
data, one-line error checks, and a tiny generated dataset for streamed input."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from kd_jax import config as kd_config
from kd_jax.experiments import verdicts
from tiny_config import tiny_config  # noqa: F401 (the tests' shared tiny study)

# The tests compile with XLA's backend (LLVM) optimizations off: their models are tiny, so compiling
# is most of the suite's time on a 2-core machine, and it takes about half as long this way; the
# programs and their numbers (within float tolerance) are the same. Set here, before any JAX computation (no import above
# computes), and in every run.py the tests start; XLA_FLAGS that name the flag (=3 is XLA's default)
# take precedence.
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"


def with_test_xla_flag(flags: str) -> str:
  return flags if "xla_backend_optimization_level" in flags else f"{flags} {TEST_XLA_FLAG}".strip()


os.environ["XLA_FLAGS"] = with_test_xla_flag(os.environ.get("XLA_FLAGS", ""))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# Tests that repeat what a faster test already covers, kept for a thorough local run:
# KD_JAX_SLOW_TESTS=1 python -m pytest -q tests
SLOW = pytest.mark.skipif(os.environ.get("KD_JAX_SLOW_TESTS") != "1",
                          reason="covered by a faster test; KD_JAX_SLOW_TESTS=1 runs it")

# One cache per pytest-xdist worker: JAX writes cache entries in place, so two workers writing the
# same program at once could hand a reader a partial file (a recompile and a warning on stderr).
TEST_COMPILATION_CACHE = os.path.join(
    tempfile.gettempdir(), "kd_jax_test_xla" + os.environ.get("PYTEST_XDIST_WORKER", ""))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
  """In-process runs share compiled programs too (teacher training is the same for many variants)."""
  import jax
  jax.config.update("jax_compilation_cache_dir", TEST_COMPILATION_CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _run_env(env_extra=None) -> dict:
  env = dict(os.environ)
  # Processes of one test session share compiled programs (the cache is keyed by program and devices).
  env.setdefault("KD_JAX_COMPILATION_CACHE", TEST_COMPILATION_CACHE)
  env.update(env_extra or {})
  env["XLA_FLAGS"] = with_test_xla_flag(env.get("XLA_FLAGS", ""))
  return env


def run_cli(args, env_extra=None, timeout=300):
  """Runs `python run.py ARGS` in the repo; returns the CompletedProcess."""
  return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=REPO,
                        env=_run_env(env_extra), capture_output=True, text=True, timeout=timeout)


def start_run(args, env_extra=None, stderr=subprocess.STDOUT):
  """Starts `python run.py ARGS` in the repo without waiting; its stdout (and by default its
  stderr) piped."""
  return subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=_run_env(env_extra),
                          stdout=subprocess.PIPE, stderr=stderr, text=True)


def kill_when_exists(path, process, timeout=240):
  """SIGKILLs `process` as soon as `path` exists (a checkpoint it writes); fails the test if the run
  ends first or `path` does not appear within `timeout` seconds."""
  start = time.time()
  while not os.path.exists(path):
    if process.poll() is not None:
      pytest.fail(f"run finished before {path} appeared:\n{process.stdout.read()}")
    if time.time() - start > timeout:
      process.kill()
      pytest.fail(f"{path} did not appear in {timeout}s")
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()


def assert_killed_student_resumes_to_the_same_result(args, tmp_path, checkpoint: str):
  """Runs `run.py ARGS` whole, and again killed once the student's `checkpoint` (a step folder
  name) exists and then rerun: the rerun resumes the student and its results.json equals the
  whole run's."""
  whole = run_cli([*args, f"--workdir={tmp_path / 'whole'}"])
  assert whole.returncode == 0, whole.stderr
  interrupted = tmp_path / "interrupted"
  kill_when_exists(interrupted / "student" / checkpoint,
                   start_run([*args, f"--workdir={interrupted}"]))
  resumed = run_cli([*args, f"--workdir={interrupted}"])
  assert resumed.returncode == 0, resumed.stderr
  assert "[student] resuming at step" in resumed.stdout
  read = lambda d: json.loads((d / "results.json").read_text())  # noqa: E731
  assert read(interrupted) == read(tmp_path / "whole")


def run_distributed(args, num_processes: int, devices_per_process: int, timeout=300):
  """One run as `num_processes` local processes of JAX's multi-process runtime (`run.py
  --distributed`, a coordinator on a free port), each with `devices_per_process` forced CPU devices.
  Returns (return codes, outputs)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
         "JAX_PLATFORMS": "cpu"}
  processes = [start_run([*args, "--distributed", f"--coordinator_address=localhost:{port}",
                          f"--num_processes={num_processes}", f"--process_id={i}"], env)
               for i in range(num_processes)]
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  return [p.returncode for p in processes], outputs


def loss_curves_devices_results(workdir):
  """A finished run's loss per logged step by phase, device counts of its start records, results."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  curves = {}
  for r in records:
    if "loss" in r:
      curves.setdefault(r["phase"], []).append(r["loss"])
  devices = [r["devices"] for r in records if r.get("event") == "start"]
  with open(os.path.join(workdir, "results.json")) as f:
    return curves, devices, json.load(f)


@pytest.fixture
def tiny():
  return tiny_config()


def write_suite_run(root, experiment, variant, seed, student=None, ensemble=None, teachers=None,
                    finished=True):
  """A run of a suite workdir (verdicts.run_dir) with these results (unfinished: config.json)."""
  workdir = verdicts.run_dir(str(root), experiment, variant, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed}, f)
  if finished:
    results = {"teachers": teachers or [{"test_accuracy": 0.8}], "ensemble": ensemble or
               {"test_accuracy": 0.8}, "student": student or {}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
      # json writes NaN as the token NaN, as Python's json does for results of a diverged run.
      json.dump(results, f)


def random_device_data(seed, shape, max_value, mean, std, mesh):
  """Random uint8 images and labels, and the same on device as both train and test set."""
  from kd_jax import parallel  # pylint: disable=import-outside-toplevel (JAX only where needed)
  from kd_jax.data import placement  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  images = rng.integers(0, max_value, shape, dtype=np.uint8)
  labels = rng.integers(0, 10, shape[0]).astype(np.int32)
  data = parallel.replicate(placement.DeviceData(
      train_images=images, train_labels=labels, test_images=images, test_labels=labels,
      mean=np.float32([mean]), std=np.float32([std])), mesh)
  return images, labels, data


def error_lines(result):
  return [line for line in result.stderr.strip().splitlines() if line.strip()]


def assert_one_line_error(result, status=2):
  lines = error_lines(result)
  assert result.returncode == status, result.stdout[-2000:] + result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


# An experiment (sweep.py) of two tiny runs, the second of which diverges.
DIVERGING_EXPERIMENT = """
from tests.tiny_config import tiny_config

VARIANTS = ("ok", "high_lr")


def get_config(variant):
  config = tiny_config()
  if variant == "high_lr":
    config.student.optimizer.learning_rate = 1e6
  return config
"""


# ---------------------------------------------------------------------------------------------------
# A tiny streamed dataset: 40 train / 20 test JPEGs of 48-79 x 48-79 pixels (sizes differ, as
# ImageNet's), 10 classes, as an image folder and as a tfds array_record dataset (prepared here,
# without TensorFlow).

STREAM_NUM_CLASSES = 10


def stream_examples(seed, count):
  """Images of varying size whose colour depends on the class, plus noise."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(count):
    label = i % STREAM_NUM_CLASSES
    height, width = rng.integers(48, 80, size=2)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[..., label % 3] += np.uint8(40 + 18 * label)
    examples.append((image, label))
  return examples


def stream_jpeg(pixels):
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def write_stream_folder(root, train, test):
  for split, examples in (("train", train), ("val", test)):
    for i, (pixels, label) in enumerate(examples):
      folder = root / split / f"class{label}"
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:03d}.jpg").write_bytes(stream_jpeg(pixels))
  return root


def prepare_stream_tfds(data_dir, train, test):
  """An ImageNet-like tfds dataset (JPEG bytes of any size, 'validation' split) as array_record."""
  import tensorflow_datasets as tfds

  class KdJaxTinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(num_classes=STREAM_NUM_CLASSES)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(train), "validation": self._generate_examples(test)}

    def _generate_examples(self, examples):
      for i, (pixels, label) in enumerate(examples):
        yield i, {"image": stream_jpeg(pixels), "label": label}

  KdJaxTinyImagenet(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return "kd_jax_tiny_imagenet"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  """{'image_folder': overrides, 'tfds': overrides} naming the same generated images."""
  root = tmp_path_factory.mktemp("streamed_data")
  train, test = stream_examples(0, 40), stream_examples(1, 20)
  folder = write_stream_folder(root / "folder", train, test)
  name = prepare_stream_tfds(root / "tfds", train, test)
  return {
      "image_folder": ["--config.data.source=image_folder", f"--config.data.path={folder}",
                       "--config.data.test_split=val"],
      "tfds": ["--config.data.source=tfds", f"--config.data.name={name}",
               f"--config.data.data_dir={root / 'tfds'}", "--config.data.test_split=validation"],
  }


def stream_data_cfg(overrides):
  cfg = kd_config.default_config().data
  for override in overrides:
    key, value = override[len("--config.data."):].split("=", 1)
    cfg[key] = value
  cfg.name = cfg.name if cfg.source == "tfds" else ""
  return cfg


# Parameter counts of the CIFAR-100 benchmark's models at 100 classes, as counted from mdistiller's
# definitions (sum of p.numel() over model.parameters()); resnet8's counted by hand from the same
# definition (stem 464, stages 4,672 + 14,528 + 57,728, Linear 6,500), a count that gives resnet20's.
PARAMS_AT_100_CLASSES = {
    'resnet8': 83_892,
    'resnet20': 278_324, 'resnet32': 472_756, 'resnet56': 861_620, 'resnet110': 1_736_564,
    'resnet8x4': 1_233_540, 'resnet32x4': 7_433_860, 'wrn_16_2': 703_284, 'wrn_40_1': 569_780,
    'wrn_40_2': 2_255_156, 'vgg8': 3_965_028, 'vgg13': 9_462_180, 'MobileNetV2': 812_836,
    'ShuffleV1': 949_258, 'ShuffleV2': 1_355_528, 'ResNet50': 23_705_252,
}
