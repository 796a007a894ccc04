"""The reproduction suite (kd_jax/experiments/suite.py): the whole claims report of
configs/paper/small/claims.py over a fake suite workdir (no training), the suite folder, and the
command on a tiny two-experiment suite."""

import os
import shutil

import numpy as np
import pytest

from conftest import REPO, write_suite_run
from kd_jax import KdJaxError
from kd_jax.experiments import suite as suite_lib
from kd_jax.experiments import suite_table
from kd_jax.experiments import verdicts

SEEDS = (0, 1, 2)
SMALL = REPO / "configs" / "paper" / "small"


TEN = {"teacher_initial": list(range(10))}  # teacher_initial.py's MIN_SEEDS


def small_suite(root, seeds=SEEDS):
  return verdicts.Suite(str(root), seeds, TEN)


def small_claims(root, seeds=SEEDS):
  """The claims of configs/paper/small over the runs in `root`."""
  return {c.key: c for c in suite_lib.load_claims(str(SMALL))(small_suite(root, seeds))}


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
        write_suite_run(
            root, "ensemble_size", f"tau{tau}_m{m}", seed,
            student=_student(acc + jitter(), agree + jitter(), agree + 0.01 + jitter()),
            ensemble={"test_accuracy": ens + jitter()})
    for variant, acc, agree in (("baseline", 0.87, 0.91), ("mixup", 0.885, 0.912),
                                ("noise", 0.86, 0.88), ("ood_cifar10", 0.865, 0.89),
                                ("baseline_steps_ood", 0.872, 0.912),
                                ("recycle_d0", 0.85, 0.89), ("recycle_d0_steps", 0.852, 0.895),
                                ("recycle_d1", 0.85, 0.89), ("recycle_d0_d1", 0.855, 0.9)):
      write_suite_run(root, "distillation_data", variant, seed,
                      student=_student(acc + jitter(), agree + jitter(), 0.93 + jitter()))
    for lam, train in (("0", 0.92), ("0.125", 0.922), ("0.25", 0.925), ("0.375", 0.99),
                       ("0.5", 0.995), ("0.625", 0.996), ("0.75", 0.997), ("0.875", 0.998)):
      for rule in ("", "_fixed") if lam in ("0.375", "0.625", "0.875") else ("",):
        write_suite_run(root, "init_interpolation", f"lam{lam}{rule}", seed,
                        student=_student(0.87, train - 0.01, min(train + jitter() / 4, 1.0),
                                         start_train_agreement=float(lam) * 0.9))
  for seed in range(10):
    for variant in ("random", "teacher_initial"):
      write_suite_run(
          root, "teacher_initial", variant, seed,
          student=_student(0.87, 0.9 + float(rng.normal(0, 0.002)), 0.92, cka_stage1=0.9,
                           cka_stage2=0.8, independent_test_agreement=0.85))
  for seed in SEEDS:
    jitter = lambda: float(rng.normal(0, 0.002))  # noqa: E731
    for optimizer, base in (("sgd", 0.9), ("adam", 0.88)):
      for k, gain in (("0.5", -0.01), ("1", 0.0), ("2", 0.005), ("4", 0.01)):
        if optimizer == "sgd" or k != "0.5":
          write_suite_run(root, "training_length", f"{optimizer}_{k}x", seed,
                          student=_student(0.87, 0.9, base + gain + jitter()))
    write_suite_run(root, "training_length", "sgd_lr0.05_1x", seed,
                    student=_student(0.1, 0.1, 0.1))
    for variant, agree in (("unlabelled10k", 0.95), ("unlabelled30k", 0.97),
                           ("unlabelled60k", 0.995)):
      write_suite_run(root, "few_labels", variant, seed,
                      student=_student(0.72, agree + jitter() / 4, 0.995))


@pytest.fixture
def paper_like(tmp_path):
  _paper_like_suite(tmp_path / "suite")
  return tmp_path / "suite"


def test_paper_like_results_hold_for_every_claim(paper_like):
  claims = suite_lib.write_claims_report(str(paper_like), SEEDS,
                                         suite_lib.load_claims(str(SMALL)),
                                         suite=small_suite(paper_like), commit="abc123")
  assert [c.key for c in claims] == [f"C{i}" for i in range(1, 9)]
  assert {c.key: c.checks_verdict for c in claims} == {f"C{i}": "holds" for i in range(1, 9)}
  # C5's experiment is sized down, so even checks that all hold cannot decide it.
  assert {c.key: c.verdict for c in claims} == {
      f"C{i}": verdicts.AT_THIS_SCALE if i == 5 else "holds" for i in range(1, 9)}
  out = paper_like / "report"
  for i in range(1, 9):
    assert (out / f"c{i}.png").read_bytes().startswith(b"\x89PNG")
  text = (out / "results.md").read_text()
  assert "Student's t test" in text and "TOST" in text and text.count("**holds**") >= 8
  assert "Its checks give **holds**; sized down: a width-8" in text
  assert "nan" not in text.lower()


def test_results_against_the_paper_contradict(paper_like):
  # Agreement falls with m (tau 4): C2 contradicts.
  for seed in SEEDS:
    write_suite_run(paper_like, "ensemble_size", "tau4_m5", seed,
                    student=_student(0.87, 0.80 + 0.001 * seed, 0.81),
                    ensemble={"test_accuracy": 0.89})
  claims = small_claims(paper_like)
  assert claims["C2"].verdict == verdicts.CONTRADICTS
  assert claims["C1"].verdict == verdicts.HOLDS


def test_noisy_results_are_inconclusive(paper_like):
  # C6: the difference teacher_initial - random scatters around the 1 pp margin.
  for seed, agree in zip(range(10), (0.88, 0.95, 0.91, 0.92, 0.87, 0.93, 0.9, 0.94, 0.89, 0.91)):
    write_suite_run(paper_like, "teacher_initial", "teacher_initial", seed,
                    student=_student(0.87, agree, 0.92, cka_stage1=0.9, cka_stage2=0.8))
  claims = small_claims(paper_like)
  assert claims["C6"].verdict == verdicts.INCONCLUSIVE


def test_a_diverged_or_unfinished_run_makes_its_claim_incomplete_and_is_named(paper_like):
  write_suite_run(paper_like, "few_labels", "unlabelled60k", 1,
                  student=_student(0.1, float("nan"), 0.1))
  os.remove(verdicts.run_dir(str(paper_like), "init_interpolation", "lam0.5", 2) +
            "/results.json")
  claims = {c.key: c for c in suite_lib.write_claims_report(
      str(paper_like), SEEDS, suite_lib.load_claims(str(SMALL)), plots=False,
      suite=small_suite(paper_like))}
  assert claims["C8"].verdict == verdicts.INCOMPLETE
  assert claims["C5"].verdict == verdicts.INCOMPLETE
  assert claims["C1"].verdict == verdicts.HOLDS
  text = (paper_like / "report" / "results.md").read_text()
  assert "diverged" in text and "init_interpolation/lam0.5/seed2: unfinished" in text
  assert "few_labels/unlabelled60k/seed1: diverged" in text
  assert "nan" not in text.lower()


def test_suite_folder_lists_experiments_and_the_cli_dry_run(tmp_path, capsys):
  files = suite_lib.experiment_files(str(SMALL))
  names = [os.path.basename(f) for f in files]
  assert "_base.py" not in names and "ensemble_size.py" in names and len(names) == 6
  assert "claims.py" not in names  # the suite's claims, not an experiment
  with pytest.raises(KdJaxError, match="not a folder"):
    suite_lib.experiment_files(str(tmp_path / "nothing"))
  suite_lib.main([f"--suite={REPO / 'configs' / 'paper' / 'small'}",
                  f"--workdir={tmp_path / 'runs'}", "--seeds=0,1", "--dry-run"])
  out = capsys.readouterr().out
  assert "[1/94]" in out  # 2 x 39, and teacher_initial to 10 seeds: 8 x 2 and "trains its teachers" in out
  # One five-member ensemble per seed serves every experiment with the base teacher config.
  assert out.count("ensemble_size/tau1_m5/seed0: trains its teachers") == 1
  assert "ensemble_size/tau1_m1/seed0: teachers from ensemble_size/tau1_m5/seed0" in out


def test_a_suite_without_claims_gets_its_reports_and_no_verdicts(tmp_path, capsys):
  suite = tmp_path / "suite"
  suite.mkdir()
  (suite / "e.py").write_text("VARIANTS = ('v',)\n\n\ndef get_config(variant=None):\n"
                              "  return None\n")
  write_suite_run(tmp_path / "runs", "e", "v", 0, student={"test_agreement": 0.9})
  assert suite_lib.load_claims(str(suite)) is None
  assert suite_lib.run_suite(str(suite), str(tmp_path / "runs"), [0], report_only=True) is None
  assert f"{suite} has no claims.py: no verdicts" in capsys.readouterr().err
  assert not (tmp_path / "runs" / "report").exists()
  (suite / "claims.py").write_text("CLAIMS = ()\n")
  with pytest.raises(KdJaxError, match="has no get_claims"):
    suite_lib.load_claims(str(suite))


# ---------------------------------------------------------------------------------------------------
# The command on a tiny two-experiment suite

TINY_EXPERIMENT = """
from tests.tiny_config import tiny_config

VARIANTS = ({variant!r},)


def get_config(variant=None):
  config = tiny_config(ensemble_size={m})
  config.distill.temperature = {tau}
  return config
"""


@pytest.mark.e2e
def test_run_suite_shares_teachers_across_experiments_and_skips_finished_runs(tmp_path, capsys):
  suite = tmp_path / "suite"
  suite.mkdir()
  shutil.copy(SMALL / "claims.py", suite / "claims.py")
  (suite / "_shared.py").write_text("raise RuntimeError('a shared base is not an experiment')\n")
  for name, variant, m, tau in (("big", "m2", 2, 4.0), ("small", "m1", 1, 1.0)):
    (suite / f"{name}.py").write_text(TINY_EXPERIMENT.format(variant=variant, m=m, tau=tau))
  root = tmp_path / "runs"
  suite_lib.run_suite(str(suite), str(root), [0])
  out = capsys.readouterr().out
  assert "2 runs (2 to run)" in out
  assert "small/m1/seed0: teachers from big/m2/seed0" in out
  assert (root / "big" / "m2" / "seed0" / "teachers").is_dir()
  assert not (root / "small" / "m1" / "seed0" / "teachers").exists()
  for name in ("big", "small"):
    assert (root / name / "report" / "results.md").is_file()
  times = suite_lib.read_times(str(root))
  assert set(times) == {"big/m2/seed0", "small/m1/seed0"}
  # The claims of configs/paper/small have no runs here: every claim is incomplete, none a number.
  text = (root / "report" / "results.md").read_text()
  assert text.count("**incomplete**") >= 8 and "not run" in text and "nan" not in text.lower()

  before = os.path.getmtime(root / "big" / "m2" / "seed0" / "results.json")
  suite_lib.run_suite(str(suite), str(root), [0])
  assert "2 runs (0 to run)" in capsys.readouterr().out
  assert os.path.getmtime(root / "big" / "m2" / "seed0" / "results.json") == before


# ---------------------------------------------------------------------------------------------------
# C4's MixUp checks on the previous suite's numbers (docs/reproduction.md: baseline accuracy 84.77 ±
# 0.32, agreement 93.67 ± 0.39; mixup 83.69 ± 0.04 and 91.76 ± 0.18; per seed with those means)

OLD_BASELINE = {"acc": (0.8445, 0.8477, 0.8509), "agree": (0.9328, 0.9367, 0.9406)}
OLD_MIXUP = {"acc": (0.8365, 0.8369, 0.8373), "agree": (0.9158, 0.9176, 0.9194)}


def test_mixup_checks_contradict_on_the_old_suite_where_the_old_check_held(paper_like):
  for variant, numbers in (("baseline", OLD_BASELINE), ("mixup", OLD_MIXUP)):
    for seed in SEEDS:
      write_suite_run(paper_like, "distillation_data", variant, seed,
                      student=_student(numbers["acc"][seed], numbers["agree"][seed], 0.93))
  checks = {check.text.rsplit(" (", 1)[0] if check.text.endswith(")") else check.text: check
            for check in small_claims(paper_like)["C4"].checks}
  gain_difference = checks["MixUp: (student acc gain) - (test agreement gain) over baseline > 0"]
  assert gain_difference.verdict == verdicts.HOLDS  # the old, lone check: -1.08 - (-1.91) > 0
  assert checks["MixUp: student acc - baseline > 0"].verdict == verdicts.CONTRADICTS
  assert checks["MixUp: test agreement - baseline > -1 pp"].verdict == verdicts.CONTRADICTS
  assert small_claims(paper_like)["C4"].verdict == verdicts.CONTRADICTS


# ---------------------------------------------------------------------------------------------------
# The runs table: verdicts recomputed from it alone

def test_report_only_from_the_runs_table_gives_the_verdicts_of_the_runs(paper_like, tmp_path,
                                                                        capsys):
  write_suite_run(paper_like, "few_labels", "unlabelled60k", 1,
                  student=_student(0.1, float("nan"), 0.1))
  from_runs = suite_lib.write_claims_report(str(paper_like), SEEDS,
                                            suite_lib.load_claims(str(SMALL)), plots=False,
                                            suite=small_suite(paper_like), commit="abc123")
  table = paper_like / "report" / "runs.csv"
  header, first = table.read_text().splitlines()[:2]
  assert header.startswith("commit,experiment,variant,seed,status,")
  assert "student.test_agreement" in header and first.startswith("abc123,")
  committed = tmp_path / "docs" / "runs.csv"
  committed.parent.mkdir()
  shutil.copy(table, committed)
  shutil.rmtree(paper_like)  # the runs are gone: only the table is left
  suite_lib.main([f"--suite={SMALL}", f"--workdir={tmp_path / 'out'}", "--report-only",
                  f"--table={committed}"])
  out = capsys.readouterr().out
  assert "runs of commit abc123" in out
  rows, _ = suite_table.read_table(str(committed))
  from_table = suite_lib.load_claims(str(SMALL))(verdicts.Suite("", SEEDS, rows=rows))
  assert [c.verdict for c in from_table] == [c.verdict for c in from_runs]
  assert [[ch.ours() for ch in c.checks] for c in from_table] == \
      [[ch.ours() for ch in c.checks] for c in from_runs]
  assert {c.key: c.verdict for c in from_table}["C8"] == verdicts.INCOMPLETE
  assert (tmp_path / "out" / "report" / "results.md").is_file()


def test_a_malformed_runs_table_is_one_clear_error(tmp_path):
  bad = tmp_path / "runs.csv"
  bad.write_text("experiment,variant\n")
  with pytest.raises(KdJaxError, match="not a suite runs table"):
    suite_table.read_table(str(bad))
  with pytest.raises(KdJaxError, match="pass --report-only too"):
    suite_lib.run_suite(str(SMALL), str(tmp_path), SEEDS, table=str(bad))


def test_the_committed_runs_table_gives_the_committed_reports_verdicts_and_numbers():
  committed = REPO / "docs" / "reproduction" / "runs.csv"
  report = (REPO / "docs" / "reproduction" / "results.md").read_text()
  rows, commits = suite_table.read_table(str(committed))
  claims = suite_lib.load_claims(str(SMALL))(verdicts.Suite("", (0, 1, 2), rows=rows))
  for claim in claims:
    assert f"## {claim.key}: {claim.title}\n\nPaper: {claim.paper}\n\nVerdict: **{claim.verdict}**." \
        in report, claim.key
    for check in claim.checks:
      assert f"| {check.text} |" in report and f"| {check.ours()} | {check.verdict} |" in report
