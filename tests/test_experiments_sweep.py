"""The sweep (kd_jax/experiments/sweep.py) on a tiny two-variant experiment: runs, shared teachers,
skipping on rerun, the report."""

import csv
import json
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO
from kd_jax import KdJaxError
from kd_jax.experiments import sweep

SEEDS = "0,1"
# conftest's tiny digits study, with the distillation temperature as the variant.
EXPERIMENT = """
from tests.tiny_config import tiny_config

VARIANTS = ("t1", "t4")


def get_config(variant=None):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
  config = tiny_config()
  config.distill.temperature = {"t1": 1.0, "t4": 4.0}[variant]
  return config
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  path = tmp_path_factory.mktemp("experiment") / "temperature.py"
  path.write_text(EXPERIMENT)
  return str(path)


@pytest.fixture(scope="module")
def swept(experiment, tmp_path_factory):
  """The whole sweep as a user runs it: `python sweep.py` in a fresh process."""
  workdir = tmp_path_factory.mktemp("sweep") / "temperature"
  env = {**os.environ, "KD_JAX_COMPILATION_CACHE":
         os.path.join(tempfile.gettempdir(), "kd_jax_test_xla")}
  result = subprocess.run(
      [sys.executable, "sweep.py", f"--config={experiment}", f"--workdir={workdir}",
       f"--seeds={SEEDS}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir, result.stdout


def _results(workdir, name):
  with open(workdir / name / "results.json") as f:
    return json.load(f)


@pytest.mark.e2e
def test_every_run_finishes_and_is_labelled(swept):
  workdir, stdout = swept
  for variant in ("t1", "t4"):
    for seed in (0, 1):
      run = workdir / variant / f"seed{seed}"
      assert (run / "results.json").is_file()
      label = json.loads((run / "variant.json").read_text())
      assert (label["experiment"], label["variant"], label["seed"]) == ("temperature", variant, seed)
  assert "[4/4]" in stdout


@pytest.mark.e2e
def test_second_variant_reuses_the_first_variants_teachers(swept):
  workdir, stdout = swept
  for seed in (0, 1):
    provider, user = f"t1/seed{seed}", f"t4/seed{seed}"
    assert (workdir / provider / "teachers").is_dir()
    assert not (workdir / user / "teachers").exists()
    config = json.loads((workdir / user / "config.json").read_text())
    assert config["teacher"]["load_from"] == str(workdir / provider)
    assert _results(workdir, user)["ensemble"] == _results(workdir, provider)["ensemble"]
    assert _results(workdir, user)["student"] != _results(workdir, provider)["student"]
    assert f"{user}: teachers from {provider}" in stdout


@pytest.mark.e2e
def test_report_holds_both_variants_over_the_seeds(swept):
  workdir, stdout = swept
  out = workdir / "report"
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(row["variant"], row["n"]) for row in rows] == [("t1", "2"), ("t4", "2")]
  assert "| t1 | 2 |" in (out / "results.md").read_text() and "| t4 | 2 |" in stdout
  for name in ("agreement_vs_accuracy.png", "train_vs_test_agreement.png", "training_curves.png"):
    with open(out / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_rerun_skips_every_finished_run(swept, experiment, capsys):
  workdir, _ = swept
  before = {p: os.path.getmtime(p) for p in workdir.glob("*/seed*/results.json")}
  runs = sweep.run_sweep(experiment, str(workdir), [0, 1])
  assert all(run.done for run in runs)
  assert capsys.readouterr().out.count("finished: skipped") == 4
  assert before == {p: os.path.getmtime(p) for p in workdir.glob("*/seed*/results.json")}


@pytest.mark.e2e
def test_other_overrides_on_finished_runs_are_refused_before_running(swept, experiment):
  workdir, _ = swept
  with pytest.raises(KdJaxError, match="distill.alpha"):
    sweep.run_sweep(experiment, str(workdir), [0], overrides=[("distill.alpha", "0.5")])


def test_dry_run_plans_providers_first(experiment, tmp_path, capsys):
  # One seed and t4 alone: t4 trains teachers. Adding t1 later must not retrain or reorder t4's.
  runs = sweep.run_sweep(experiment, str(tmp_path), [0, 1], variants_text="t4,t1", dry_run=True)
  assert [run.name for run in runs] == ["t1/seed0", "t4/seed0", "t1/seed1", "t4/seed1"]
  assert [run.provider and run.provider.name for run in runs] == [None, "t1/seed0", None, "t1/seed1"]
  assert "[2/4] t4/seed0: teachers from t1/seed0" in capsys.readouterr().out
  assert not os.listdir(tmp_path)


def test_a_started_run_keeps_training_its_own_teachers(experiment, tmp_path):
  # t4/seed0 started alone (it trains its own teachers); t1/seed0 must then take them from it.
  started = tmp_path / "t4" / "seed0"
  started.mkdir(parents=True)
  config = sweep.load_experiment(experiment).get_config("t4")
  (started / "config.json").write_text(config.to_json_best_effort(sort_keys=True))
  runs = sweep.run_sweep(experiment, str(tmp_path), [0], dry_run=True)
  assert [(run.name, run.provider and run.provider.name) for run in runs] == [
      ("t4/seed0", None), ("t1/seed0", "t4/seed0")]


@pytest.mark.parametrize("args, message", [
    (["--variants=t2"], "unknown variant 't2'; choose from t1, t4"),
    (["--config.student.dept=3"], "unknown config key 'student.dept'"),
    (["--config.student.steps=many"], "--config.student.steps=many: expected a int"),
    (["--config.teacher.model=x"], "is a section"),
    (["--config.seed=3"], "use --seeds"),
    (["--seeds=a"], "--seeds"),
    (["--config.teacher.ensemble_size=0"], "config.teacher.ensemble_size=0 must be > 0"),
])
def test_cli_errors_are_one_line(experiment, tmp_path, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--config={experiment}", f"--workdir={tmp_path / 'w'}", "--dry-run", *args])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
  assert not (tmp_path / "w").exists()


def test_experiment_file_without_variants_is_refused(tmp_path):
  plain = tmp_path / "plain.py"
  plain.write_text("def get_config():\n  return None\n")
  with pytest.raises(KdJaxError, match="VARIANTS"):
    sweep.load_experiment(str(plain))


# ---------------------------------------------------------------------------------------------------
# Ensemble sizes share one trained ensemble

SIZES_EXPERIMENT = """
from tests.tiny_config import tiny_config

VARIANTS = ("m1", "m3", "m2", "longer")


def get_config(variant=None):
  config = tiny_config(ensemble_size={"m1": 1, "m2": 2, "m3": 3, "longer": 2}[variant])
  if variant == "longer":
    config.teacher.steps = 16  # other teachers: trains its own
  return config
"""


@pytest.fixture
def sizes_experiment(tmp_path):
  path = tmp_path / "sizes.py"
  path.write_text(SIZES_EXPERIMENT)
  return str(path)


def test_smaller_ensembles_load_the_first_members_of_the_largest(sizes_experiment, tmp_path):
  runs = sweep.run_sweep(sizes_experiment, str(tmp_path / "w"), [0, 1], dry_run=True)
  by_name = {run.name: run for run in runs}
  for seed in (0, 1):
    provider = by_name[f"m3/seed{seed}"]
    assert provider.provider is None and not provider.config.teacher.load_from
    for user in ("m1", "m2"):
      run = by_name[f"{user}/seed{seed}"]
      assert run.provider is provider
      assert run.config.teacher.load_from == provider.workdir
      assert runs.index(run) > runs.index(provider)
    assert by_name[f"longer/seed{seed}"].provider is None
  # 3 + 2 teacher trainings per seed instead of 1 + 3 + 2 + 2.
  assert sum(run.provider is None for run in runs) == 4


def test_a_started_smaller_ensemble_keeps_its_own_teachers(sizes_experiment, tmp_path):
  started = tmp_path / "w" / "m1" / "seed0"
  started.mkdir(parents=True)
  config = sweep.load_experiment(sizes_experiment).get_config("m1")
  config.seed = 0
  (started / "config.json").write_text(config.to_json_best_effort(sort_keys=True))
  runs = {run.name: run for run in sweep.run_sweep(sizes_experiment, str(tmp_path / "w"), [0],
                                                   dry_run=True)}
  assert runs["m1/seed0"].provider is None and runs["m1/seed0"].started
  assert runs["m2/seed0"].provider is runs["m3/seed0"]


@pytest.mark.e2e
def test_shared_members_equal_teachers_trained_alone(tmp_path):
  """Teacher i depends only on the seed and i: member 0 of a trained 2-ensemble, loaded by an m = 1
  run, scores like the teacher an m = 1 run trains itself."""
  from conftest import tiny_config
  from kd_jax import study
  pair = tiny_config(ensemble_size=2)
  study.run(pair, str(tmp_path / "pair"))
  shared = tiny_config(ensemble_size=1)
  shared.teacher.load_from = str(tmp_path / "pair")
  alone = tiny_config(ensemble_size=1)
  shared_results = study.run(shared, str(tmp_path / "shared"))
  alone_results = study.run(alone, str(tmp_path / "alone"))
  for key in ("test_accuracy", "test_nll", "train_accuracy"):
    assert shared_results["teachers"][0][key] == pytest.approx(
        alone_results["teachers"][0][key], rel=1e-4, abs=1e-6)
  assert not (tmp_path / "shared" / "teachers").exists()


def test_a_gan_config_is_refused_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "sweep.py", "--config=configs/paper/sngan_cifar.py",
       f"--workdir={tmp_path / 's'}", "--dry-run"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2
  assert "config.study='gan' run" in result.stderr and "run it with run.py" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "s").exists()
