"""The reproduction suite's verdicts on synthetic results: the rule itself, runs that did not finish
or diverged, and the whole claims report over a fake suite workdir (no training)."""

import json
import math
import os

import numpy as np
import pytest

from conftest import REPO
from kd_jax import KdJaxError, reproduce

SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------------
# The rule

def test_decide_holds_contradicts_and_is_inconclusive_by_two_standard_errors():
  # mean 0.03, std 0.01, SE 0.00577: 2 SE = 0.0115.
  values = np.array([0.02, 0.03, 0.04])
  assert reproduce.decide(values, 0.0, +1) == reproduce.HOLDS
  assert reproduce.decide(values, 0.0, -1) == reproduce.CONTRADICTS
  assert reproduce.decide(values, 0.025, +1) == reproduce.INCONCLUSIVE  # 0.005 < 2 SE
  assert reproduce.decide(values, 0.018, +1) == reproduce.HOLDS  # 0.012 > 2 SE
  assert reproduce.decide(values, 0.019, +1) == reproduce.INCONCLUSIVE  # 0.011 < 2 SE


def test_decide_matches_a_direct_transcription_on_random_values():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(2, 6))
    values = rng.normal(rng.normal(), rng.uniform(0.1, 2), n)
    threshold, direction = float(rng.normal()), int(rng.choice([-1, 1]))
    se = np.std(values, ddof=1) / math.sqrt(n)
    t = direction * (np.mean(values) - threshold) / se
    expected = "holds" if t > 2 else "contradicts" if t < -2 else "inconclusive"
    assert reproduce.decide(values, threshold, direction) == expected


def test_one_seed_or_non_finite_values_are_inconclusive_never_a_verdict():
  assert reproduce.decide(np.array([0.5]), 0.0, +1) == reproduce.INCONCLUSIVE
  assert reproduce.decide(np.array([0.5, math.nan, 0.6]), 0.0, +1) == reproduce.INCONCLUSIVE
  with pytest.raises(ValueError):
    reproduce.decide(np.array([1.0, 2.0]), 0.0, 0)


def test_combine():
  H, C, I, X = (reproduce.HOLDS, reproduce.CONTRADICTS, reproduce.INCONCLUSIVE,
                reproduce.INCOMPLETE)
  assert reproduce.combine([H, H]) == H
  assert reproduce.combine([H, I]) == I
  assert reproduce.combine([H, C, I]) == C
  assert reproduce.combine([C, X]) == X
  assert reproduce.combine([]) == I


# ---------------------------------------------------------------------------------------------------
# Reading runs: unfinished and diverged runs are named, never numbers

def _write(root, experiment, variant, seed, student=None, ensemble=None, teachers=None,
           finished=True):
  workdir = reproduce.run_dir(str(root), experiment, variant, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed}, f)
  if finished:
    results = {"teachers": teachers or [{"test_accuracy": 0.8}], "ensemble": ensemble or
               {"test_accuracy": 0.8}, "student": student or {}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
      # json writes NaN as the token NaN, as Python's json does for results of a diverged run.
      json.dump(results, f)


def test_unfinished_missing_and_diverged_runs_are_problems_not_values(tmp_path):
  _write(tmp_path, "e", "v", 0, student={"test_agreement": 0.9})
  _write(tmp_path, "e", "v", 1, student={"test_agreement": float("nan")})
  _write(tmp_path, "e", "v", 2, finished=False)
  cell = reproduce.load_cell(str(tmp_path), "e", "v", (0, 1, 2, 3), "student.test_agreement")
  assert cell.values == {0: 0.9}
  assert cell.problems[1].startswith("e/v/seed1: diverged")
  assert cell.problems[2] == "e/v/seed2: unfinished"
  assert cell.problems[3] == "e/v/seed3: not run"
  check = reproduce.Check("agreement < 95 %", cell, 0.95, -1)
  assert check.verdict == reproduce.INCOMPLETE


def test_differences_pair_seeds_and_carry_problems_of_either_side(tmp_path):
  for seed, (a, b) in enumerate(((0.9, 0.8), (0.7, 0.65), (0.6, 0.6))):
    _write(tmp_path, "e", "a", seed, student={"test_agreement": a})
    _write(tmp_path, "e", "b", seed, student={"test_agreement": b}, finished=seed != 2)
  a = reproduce.load_cell(str(tmp_path), "e", "a", SEEDS, "student.test_agreement")
  b = reproduce.load_cell(str(tmp_path), "e", "b", SEEDS, "student.test_agreement")
  diff = reproduce.difference(a, b)
  assert diff.values == pytest.approx({0: 0.1, 1: 0.05})
  assert list(diff.problems) == [2] and "e/b/seed2: unfinished" in diff.problems[2]


def test_mean_teacher_accuracy_and_missing_metric(tmp_path):
  _write(tmp_path, "e", "v", 0, teachers=[{"test_accuracy": 0.6}, {"test_accuracy": 0.8}])
  cell = reproduce.load_cell(str(tmp_path), "e", "v", (0,), "teachers.test_accuracy")
  assert cell.values == {0: pytest.approx(0.7)}
  cell = reproduce.load_cell(str(tmp_path), "e", "v", (0,), "student.cka_stage1")
  assert cell.problems == {0: "e/v/seed0: has no student.cka_stage1"}


def test_format_values_never_shows_a_number_for_no_runs():
  assert reproduce.format_values(np.array([])) == "no finished run"
  assert reproduce.format_values(np.array([0.5, 0.7])) == "60.00 ± 14.14 (n = 2)"


# ---------------------------------------------------------------------------------------------------
# The whole claims report on a synthetic suite that reproduces the paper

AGREE, TRAIN = "test_agreement", "train_agreement"


def _student(acc, agree, train, **extra):
  return {"test_accuracy": acc, AGREE: agree, TRAIN: train, **extra}


def _paper_like_suite(root):
  """Every run of configs/paper/small with numbers in the paper's directions (noise per seed)."""
  rng = np.random.default_rng(0)
  for seed in SEEDS:
    jitter = lambda: float(rng.normal(0, 0.002))  # noqa: E731
    for tau in (1, 4):
      for m, agree, ens, acc in ((1, 0.88, 0.86, 0.865), (3, 0.91, 0.88, 0.87),
                                 (5, 0.92, 0.89, 0.871)):
        _write(root, "ensemble_size", f"tau{tau}_m{m}", seed,
               student=_student(acc + jitter(), agree + jitter(), agree + 0.01 + jitter()),
               ensemble={"test_accuracy": ens + jitter()})
    for variant, acc, agree in (("baseline", 0.87, 0.91), ("mixup", 0.885, 0.912),
                                ("noise", 0.86, 0.88), ("ood_cifar10", 0.865, 0.89),
                                ("recycle_d0", 0.85, 0.89), ("recycle_d0_d1", 0.855, 0.9)):
      _write(root, "distillation_data", variant, seed,
             student=_student(acc + jitter(), agree + jitter(), 0.93 + jitter()))
    for lam, train in (("0", 0.92), ("0.25", 0.925), ("0.375", 0.93), ("0.5", 0.94),
                       ("0.75", 0.995)):
      _write(root, "init_interpolation", f"lam{lam}", seed,
             student=_student(0.87, train - 0.01, min(train + jitter() / 4, 1.0)))
    for variant in ("random", "teacher_initial"):
      _write(root, "teacher_initial", variant, seed,
             student=_student(0.87, 0.9 + jitter(), 0.92, cka_stage1=0.9, cka_stage2=0.8))
    for optimizer, base in (("sgd", 0.9), ("adam", 0.88)):
      for k, gain in ((1, 0.0), (3, 0.01), (10, 0.02)):
        _write(root, "training_length", f"{optimizer}_{k}x", seed,
               student=_student(0.87, 0.9, base + gain + jitter()))
    _write(root, "few_labels", "labels200", seed,
           student=_student(0.72, 0.995 + jitter() / 4, 0.995))


@pytest.fixture
def paper_like(tmp_path):
  _paper_like_suite(tmp_path / "suite")
  return tmp_path / "suite"


def test_paper_like_results_hold_for_every_claim(paper_like):
  claims = reproduce.write_claims_report(str(paper_like), SEEDS)
  assert [c.key for c in claims] == [f"C{i}" for i in range(1, 9)]
  assert {c.key: c.verdict for c in claims} == {f"C{i}": "holds" for i in range(1, 9)}
  out = paper_like / "report"
  for i in range(1, 9):
    assert (out / f"c{i}.png").read_bytes().startswith(b"\x89PNG")
  text = (out / "results.md").read_text()
  assert "2 SE" in text and text.count("**holds**") >= 8
  assert "nan" not in text.lower()


def test_results_against_the_paper_contradict(paper_like):
  # Agreement falls with m (tau 4): C2 contradicts.
  for seed in SEEDS:
    _write(paper_like, "ensemble_size", "tau4_m5", seed,
           student=_student(0.87, 0.80 + 0.001 * seed, 0.81), ensemble={"test_accuracy": 0.89})
  claims = {c.key: c for c in reproduce.claims(reproduce.Suite(str(paper_like), SEEDS))}
  assert claims["C2"].verdict == reproduce.CONTRADICTS
  assert claims["C1"].verdict == reproduce.HOLDS


def test_noisy_results_are_inconclusive(paper_like):
  # C6: the difference teacher_initial - random scatters around the 1 pp threshold.
  for seed, agree in zip(SEEDS, (0.88, 0.95, 0.91)):
    _write(paper_like, "teacher_initial", "teacher_initial", seed,
           student=_student(0.87, agree, 0.92, cka_stage1=0.9, cka_stage2=0.8))
  claims = {c.key: c for c in reproduce.claims(reproduce.Suite(str(paper_like), SEEDS))}
  assert claims["C6"].verdict == reproduce.INCONCLUSIVE


def test_a_diverged_or_unfinished_run_makes_its_claim_incomplete_and_is_named(paper_like):
  _write(paper_like, "few_labels", "labels200", 1, student=_student(0.1, float("nan"), 0.1))
  os.remove(reproduce.run_dir(str(paper_like), "init_interpolation", "lam0.5", 2) +
            "/results.json")
  claims = {c.key: c for c in reproduce.write_claims_report(str(paper_like), SEEDS, plots=False)}
  assert claims["C8"].verdict == reproduce.INCOMPLETE
  assert claims["C5"].verdict == reproduce.INCOMPLETE
  assert claims["C1"].verdict == reproduce.HOLDS
  text = (paper_like / "report" / "results.md").read_text()
  assert "diverged" in text and "init_interpolation/lam0.5/seed2: unfinished" in text
  assert "few_labels/labels200/seed1: diverged" in text
  assert "nan" not in text.lower()


def test_suite_folder_lists_experiments_and_the_cli_dry_run(tmp_path, capsys):
  files = reproduce.experiment_files(str(REPO / "configs" / "paper" / "small"))
  names = [os.path.basename(f) for f in files]
  assert "_base.py" not in names and "ensemble_size.py" in names and len(names) == 6
  with pytest.raises(KdJaxError, match="not a folder"):
    reproduce.experiment_files(str(tmp_path / "nothing"))
  reproduce.main([f"--suite={REPO / 'configs' / 'paper' / 'small'}",
                  f"--workdir={tmp_path / 'runs'}", "--seeds=0,1", "--dry-run"])
  out = capsys.readouterr().out
  assert "[1/52]" in out and "trains its teachers" in out
  # One five-member ensemble per seed serves every experiment with the base teacher config.
  assert out.count("ensemble_size/tau1_m5/seed0: trains its teachers") == 1
  assert "ensemble_size/tau1_m1/seed0: teachers from ensemble_size/tau1_m5/seed0" in out


def test_checks_show_their_unit():
  cell = reproduce.Cell("e/v", {0: 0.01, 1: 0.03}, {})
  assert reproduce.Check("d", cell, 0.0, +1, unit="pp").ours() == "2.00 ± 1.41 pp (n = 2)"
  assert reproduce.Check("l", cell, 0.0, +1).ours() == "2.00 ± 1.41 % (n = 2)"
  assert reproduce.Check("r", cell, 0.0, +1, unit="").ours() == "0.020 ± 0.014 (n = 2)"
  empty = reproduce.Cell("e/v", {}, {0: "e/v/seed0: unfinished"})
  assert reproduce.Check("d", empty, 0.0, +1, unit="pp").ours() == "no finished run"


# ---------------------------------------------------------------------------------------------------
# The command on a tiny two-experiment suite

TINY_EXPERIMENT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config

VARIANTS = ({variant!r},)


def get_config(variant=None):
  config = tiny_config(ensemble_size={m})
  config.distill.temperature = {tau}
  return config
"""


def test_run_suite_shares_teachers_across_experiments_and_skips_finished_runs(tmp_path, capsys):
  suite = tmp_path / "suite"
  suite.mkdir()
  (suite / "_shared.py").write_text("raise RuntimeError('a shared base is not an experiment')\n")
  for name, variant, m, tau in (("big", "m2", 2, 4.0), ("small", "m1", 1, 1.0)):
    (suite / f"{name}.py").write_text(TINY_EXPERIMENT.format(
        tests=str(REPO / "tests"), variant=variant, m=m, tau=tau))
  root = tmp_path / "runs"
  reproduce.run_suite(str(suite), str(root), [0])
  out = capsys.readouterr().out
  assert "2 runs (2 to run)" in out
  assert "small/m1/seed0: teachers from big/m2/seed0" in out
  assert (root / "big" / "m2" / "seed0" / "teachers").is_dir()
  assert not (root / "small" / "m1" / "seed0" / "teachers").exists()
  for name in ("big", "small"):
    assert (root / name / "report" / "results.md").is_file()
  times = reproduce.read_times(str(root))
  assert set(times) == {"big/m2/seed0", "small/m1/seed0"}
  # The claims of configs/paper/small have no runs here: every claim is incomplete, none a number.
  text = (root / "report" / "results.md").read_text()
  assert text.count("**incomplete**") >= 8 and "not run" in text and "nan" not in text.lower()

  before = os.path.getmtime(root / "big" / "m2" / "seed0" / "results.json")
  reproduce.run_suite(str(suite), str(root), [0])
  assert "2 runs (0 to run)" in capsys.readouterr().out
  assert os.path.getmtime(root / "big" / "m2" / "seed0" / "results.json") == before
