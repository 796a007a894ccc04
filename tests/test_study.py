"""End to end on digits: workdir outputs, results against an independent recomputation, error cases."""

import copy
import json
import os

import numpy as np
import pytest

from conftest import run_cli, tiny_config
from kd_jax import KdJaxError, study
from kd_jax.workdir import CONFIG_FILE, METRICS_FILE, RESULTS_FILE
from kd_jax.study import phases

pytestmark = pytest.mark.e2e

CLASSIFICATION_KEYS = {"test_accuracy", "test_nll", "test_ece"}
FIDELITY_KEYS = {"test_agreement", "test_kl", "train_agreement", "train_kl"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  results = study.run(config, workdir)
  return config, workdir, results


def test_a_run_with_cached_teacher_logits_matches_one_without(finished_run, tmp_path):
  """distill.cache_teacher_logits flipped from the finished run's: the same ensemble, and the same
  student up to float32 summation order."""
  config, _, results = finished_run
  flipped = copy.deepcopy(config)
  flipped.distill.cache_teacher_logits = not config.distill.cache_teacher_logits
  other = study.run(flipped, str(tmp_path))
  assert other["ensemble"] == results["ensemble"]
  for key, value in results["student"].items():
    assert other["student"][key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_workdir_holds_config_metrics_checkpoints_results(finished_run):
  config, workdir, results = finished_run
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    assert json.load(f)["teacher"]["ensemble_size"] == config.teacher.ensemble_size
  with open(os.path.join(workdir, RESULTS_FILE)) as f:
    assert json.load(f) == results
  records = [json.loads(line) for line in open(os.path.join(workdir, METRICS_FILE))]
  student_losses = [r["loss"] for r in records if r.get("phase") == "student" and "loss" in r]
  assert len(student_losses) == config.student.steps // config.log_every_steps
  assert any(r.get("phase") == "evaluation" for r in records)
  for i in range(config.teacher.ensemble_size):
    assert os.path.isdir(os.path.join(workdir, "teachers", f"member_{i}"))
  assert os.path.isdir(os.path.join(workdir, "student", str(config.student.steps)))


def test_study_plan_names_the_phases_the_run_trains(finished_run):
  """The loop finds its phase in the plan by name: the plan must use the names runs train under."""
  config, workdir, _ = finished_run
  records = [json.loads(line) for line in open(os.path.join(workdir, METRICS_FILE))]
  trained = {r["phase"] for r in records if "loss" in r}
  plan = phases.study_plan(config, 1000, 1000, 1000, 100)  # the config fixes the step counts
  assert trained == {p.name for p in plan.phases if p.kind != "evaluation"}
  assert len(trained) == 2 and {"student", "teachers 1-2/2"} == trained


def test_results_shape_and_ranges(finished_run):
  config, _, results = finished_run
  assert len(results["teachers"]) == config.teacher.ensemble_size
  for entry in results["teachers"] + [results["ensemble"]]:
    assert CLASSIFICATION_KEYS <= entry.keys()
  assert CLASSIFICATION_KEYS | FIDELITY_KEYS <= results["student"].keys()
  for entry in results["teachers"] + [results["ensemble"], results["student"]]:
    for key in ("test_accuracy", "test_ece", "train_accuracy"):
      assert 0.0 <= entry[key] <= 1.0
    assert entry["test_nll"] > 0
  assert 0.0 <= results["student"]["test_agreement"] <= 1.0
  assert results["student"]["test_kl"] >= 0.0


def test_results_match_an_independent_numpy_evaluation(finished_run):
  """Recomputes teacher, ensemble and student test metrics with NumPy from the saved checkpoints."""
  import jax
  from kd_jax import checkpoint
  from kd_jax.data import load_dataset
  from kd_jax.models import build_model

  config, workdir, results = finished_run
  dataset = load_dataset(config.data)
  scaled = dataset.train_images.astype(np.float32) / 255.0
  mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2)) + 1e-8
  x = (dataset.test_images.astype(np.float32) / 255.0 - mean) / std
  labels = dataset.test_labels

  def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)

  teacher = build_model(config.teacher.model, dataset.num_classes)
  template = jax.eval_shape(lambda: teacher.init(jax.random.PRNGKey(0), x[:1], train=False))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  probs = []
  for i in range(config.teacher.ensemble_size):
    variables = checkpoint.load_variables(os.path.join(workdir, "teachers", f"member_{i}"), template)
    p = softmax(np.asarray(teacher.apply(variables, x, train=False), np.float64))
    assert np.isclose(results["teachers"][i]["test_accuracy"], np.mean(p.argmax(-1) == labels))
    probs.append(p)
  ensemble_p = np.mean(probs, axis=0)
  assert np.isclose(results["ensemble"]["test_accuracy"], np.mean(ensemble_p.argmax(-1) == labels))
  assert np.isclose(results["ensemble"]["test_nll"],
                    -np.mean(np.log(ensemble_p[np.arange(len(labels)), labels])), rtol=1e-4)

  student = build_model(config.student.model, dataset.num_classes)
  state_template = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), x[:1], train=False))
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.join(workdir, "student"))
  saved = manager.restore(manager.latest_step())
  manager.close()
  del state_template
  student_p = softmax(np.asarray(student.apply({"params": saved["params"]}, x, train=False),
                                 np.float64))
  agreement = np.mean(student_p.argmax(-1) == ensemble_p.argmax(-1))
  kl = np.mean(np.sum(ensemble_p * (np.log(ensemble_p) - np.log(student_p)), axis=-1))
  assert np.isclose(results["student"]["test_agreement"], agreement)
  assert np.isclose(results["student"]["test_kl"], kl, rtol=1e-3, atol=1e-5)


def test_rerun_of_a_finished_run_reproduces_its_results(finished_run):
  config, workdir, results = finished_run
  assert study.run(config, workdir) == results


def test_workdir_of_a_different_config_is_refused_and_untouched(finished_run):
  config, workdir, _ = finished_run
  before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  other = tiny_config()
  other.distill.temperature = 1.0
  with pytest.raises(KdJaxError, match="distill.temperature"):
    study.run(other, workdir)
  assert before == {name: os.path.getmtime(os.path.join(workdir, name))
                    for name in os.listdir(workdir)}


def test_foreign_non_empty_workdir_is_refused(tmp_path):
  (tmp_path / "precious.txt").write_text("not ours")
  with pytest.raises(KdJaxError, match="not empty"):
    study.run(tiny_config(), str(tmp_path))
  assert os.listdir(tmp_path) == ["precious.txt"]


def test_teachers_are_reused_from_another_workdir(finished_run, tmp_path):
  config, workdir, results = finished_run
  reuse = tiny_config()
  reuse.teacher.load_from = workdir
  reused = study.run(reuse, str(tmp_path / "reuse"))
  assert not os.path.exists(tmp_path / "reuse" / "teachers")
  assert reused["ensemble"] == results["ensemble"]
  assert reused["student"] == results["student"]  # same seed, same teachers: the same student


def test_shape_incompatible_teacher_checkpoint_is_refused(finished_run, tmp_path):
  _, workdir, _ = finished_run
  other = tiny_config()
  other.teacher.load_from = workdir
  other.teacher.model.width = 16  # the saved teachers have width 8
  with pytest.raises(KdJaxError, match="does not fit config.teacher.model"):
    study.run(other, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_missing_teacher_checkpoint_is_refused(tmp_path):
  config = tiny_config()
  config.teacher.load_from = str(tmp_path / "nowhere")
  with pytest.raises(KdJaxError, match="does not exist"):
    study.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("key, value, message", [
    ("precision", "fp8", "config.precision"),
    ("distill.loss", "l2", "config.distill.loss"),
    ("student.batch_size", 0, "config.student.batch_size"),
    ("distill.alpha", 1.5, "config.distill.alpha"),
])
def test_invalid_values_are_refused_before_the_workdir_is_made(tmp_path, key, value, message):
  config = tiny_config()
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(KdJaxError, match=message):
    study.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def _assert_one_line_usage_error(result):
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_cli_unknown_config_key(tmp_path):
  result = run_cli(["--config=tests/tiny_config.py", f"--workdir={tmp_path / 'w'}",
                    "--config.student.dept=20"])
  assert "student.dept" in _assert_one_line_usage_error(result)
  assert not os.path.exists(tmp_path / "w")


def test_cli_unavailable_dataset_says_how_to_provide_it(tmp_path):
  result = run_cli(["--config=configs/cifar_kd.py", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.download=false",
                    f"--config.data.download_dir={tmp_path / 'cache'}"])
  line = _assert_one_line_usage_error(result)
  assert "cifar100" in line and "data_dir" in line and "--config.data.download=false" in line
  assert not os.path.exists(tmp_path / "cache")  # nothing downloaded
  assert not os.path.exists(tmp_path / "w")  # so the corrected command can start there


def test_cli_workdir_of_another_run(finished_run):
  _, workdir, _ = finished_run
  result = run_cli(["--config=tests/tiny_config.py", f"--workdir={workdir}",
                    "--config.distill.alpha=0.5"])
  assert "distill.alpha" in _assert_one_line_usage_error(result)


def test_cli_missing_config_file(tmp_path):
  result = run_cli(["--config=configs/nope.py", f"--workdir={tmp_path}"])
  assert "configs/nope.py" in _assert_one_line_usage_error(result)
