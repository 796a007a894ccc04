"""The verdict rule of the reproduction suite (kd_jax/experiments/verdicts.py) on synthetic results:
the rule itself, and runs that did not finish or diverged (named, never numbers)."""

import math

import numpy as np
import pytest

from conftest import write_suite_run
from kd_jax.experiments import verdicts

SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------------
# The rule

def test_decide_is_a_one_sided_t_test_at_95_percent_with_n_minus_1_degrees_of_freedom():
  # mean 0.03, std 0.01, SE 0.00577; t_{0.95, 2} = 2.92: the boundary is 0.03 -+ 0.01686.
  values = np.array([0.02, 0.03, 0.04])
  assert verdicts.critical_value(3) == pytest.approx(2.919986, abs=1e-6)
  assert verdicts.critical_value(10) == pytest.approx(1.833113, abs=1e-6)
  assert verdicts.decide(values, 0.0, +1) == verdicts.HOLDS
  assert verdicts.decide(values, 0.0, -1) == verdicts.CONTRADICTS
  assert verdicts.decide(values, 0.013, +1) == verdicts.HOLDS  # 0.017 > 0.01686
  assert verdicts.decide(values, 0.0135, +1) == verdicts.INCONCLUSIVE  # 0.0165 < 0.01686
  # Two SE (the old rule) would have held here; at 95 % with 2 degrees of freedom it does not.
  assert verdicts.decide(values, 0.018, +1) == verdicts.INCONCLUSIVE
  assert verdicts.decide(values, 0.05, +1) == verdicts.CONTRADICTS  # 0.02 below, t = -3.46
  assert verdicts.decide(values, 0.045, +1) == verdicts.INCONCLUSIVE  # t = -2.60


def test_decide_matches_a_direct_transcription_on_random_values():
  rng = np.random.default_rng(0)
  quantiles = {2: 6.313752, 3: 2.919986, 4: 2.353363, 5: 2.131847}  # t_{0.95, n-1} (tables)
  for _ in range(200):
    n = int(rng.integers(2, 6))
    values = rng.normal(rng.normal(), rng.uniform(0.1, 2), n)
    threshold, direction = float(rng.normal()), int(rng.choice([-1, 1]))
    se = np.std(values, ddof=1) / math.sqrt(n)
    t = direction * (np.mean(values) - threshold) / se
    q = quantiles[n]
    expected = "holds" if t > q else "contradicts" if t < -q else "inconclusive"
    assert verdicts.decide(values, threshold, direction) == expected


def test_equivalence_is_two_one_sided_tests_within_the_margin():
  q = verdicts.critical_value(10)
  spread = np.linspace(-1, 1, 10)
  spread = spread / spread.std(ddof=1)  # std 1, so SE = s / sqrt(10)
  def values(mean, std):
    return mean + std * spread
  se = 0.002 / math.sqrt(10)
  # Mean 0, small spread: both one-sided tests significant.
  assert verdicts.decide_equivalent(values(0.0, 0.002), 0.01) == verdicts.HOLDS
  # Mean just inside the margin, but not significantly: inconclusive.
  assert verdicts.decide_equivalent(values(0.01 - 0.5 * q * se, 0.002), 0.01) == verdicts.INCONCLUSIVE
  assert verdicts.decide_equivalent(values(0.01 - 1.1 * q * se, 0.002), 0.01) == verdicts.HOLDS
  # Significantly outside, on either side: contradicts.
  assert verdicts.decide_equivalent(values(0.02, 0.002), 0.01) == verdicts.CONTRADICTS
  assert verdicts.decide_equivalent(values(-0.02, 0.002), 0.01) == verdicts.CONTRADICTS
  # Outside, but not significantly: inconclusive.
  assert verdicts.decide_equivalent(values(0.01 + 0.5 * q * se, 0.002), 0.01) == verdicts.INCONCLUSIVE
  # Centred but noisy (SE 0.4 pp, 3 seeds as the old suite): cannot show equivalence within 1 pp.
  assert verdicts.decide_equivalent(np.array([-0.007, 0.0, 0.007]), 0.01) == verdicts.INCONCLUSIVE
  with pytest.raises(ValueError):
    verdicts.decide_equivalent(values(0.0, 0.002), 0.0)


def test_an_equivalence_check_uses_tost_and_names_its_test():
  cell = verdicts.Cell("e/v", dict(enumerate([0.001, -0.001, 0.0, 0.002, -0.002])), {})
  check = verdicts.Check("same", cell, 0.01, 0, unit="pp")
  assert check.verdict == verdicts.HOLDS and check.test == "equivalence (TOST)"
  assert verdicts.Check("up", cell, 0.0, +1).test == "one-sided t, greater"


def test_only_a_check_that_carries_the_claim_decides_it():
  holds = verdicts.Cell("a", {0: 0.02, 1: 0.03, 2: 0.04}, {})
  against = verdicts.Cell("b", {0: -0.02, 1: -0.03, 2: -0.04}, {})
  missing = verdicts.Cell("c", {}, {0: "c/seed0: not run"})
  claim = lambda *checks: verdicts.Claim("C", "t", "p", list(checks), [])  # noqa: E731
  carrying = verdicts.Check("carries", holds, 0.0, +1)
  informative = verdicts.Check("informative", against, 0.0, +1, carries=False)
  assert informative.verdict == verdicts.CONTRADICTS
  assert claim(carrying, informative).verdict == verdicts.HOLDS
  assert claim(carrying, verdicts.Check("x", against, 0.0, +1)).verdict == verdicts.CONTRADICTS
  unrun = claim(carrying, verdicts.Check("i", missing, 0.0, +1, carries=False))
  assert unrun.verdict == verdicts.HOLDS and unrun.problems() == []


def test_a_reduced_scale_claim_is_inconclusive_at_this_scale_unless_incomplete():
  against = verdicts.Cell("b", {0: -0.02, 1: -0.03, 2: -0.04}, {})
  missing = verdicts.Cell("c", {}, {0: "c/seed0: not run"})
  claim = lambda *checks: verdicts.Claim("C", "t", "p", list(checks), [],  # noqa: E731
                                         reduced_scale="a smaller network")
  contradicted = claim(verdicts.Check("x", against, 0.0, +1))
  assert contradicted.checks_verdict == verdicts.CONTRADICTS
  assert contradicted.verdict == verdicts.AT_THIS_SCALE
  assert claim(verdicts.Check("m", missing, 0.0, +1)).verdict == verdicts.INCOMPLETE


def test_one_seed_or_non_finite_values_are_inconclusive_never_a_verdict():
  assert verdicts.decide(np.array([0.5]), 0.0, +1) == verdicts.INCONCLUSIVE
  assert verdicts.decide(np.array([0.5, math.nan, 0.6]), 0.0, +1) == verdicts.INCONCLUSIVE
  with pytest.raises(ValueError):
    verdicts.decide(np.array([1.0, 2.0]), 0.0, 0)


def test_combine():
  H, C, I, X = (verdicts.HOLDS, verdicts.CONTRADICTS, verdicts.INCONCLUSIVE,
                verdicts.INCOMPLETE)
  assert verdicts.combine([H, H]) == H
  assert verdicts.combine([H, I]) == I
  assert verdicts.combine([H, C, I]) == C
  assert verdicts.combine([C, X]) == X
  assert verdicts.combine([]) == I


# ---------------------------------------------------------------------------------------------------
# Reading runs: unfinished and diverged runs are named, never numbers

def test_unfinished_missing_and_diverged_runs_are_problems_not_values(tmp_path):
  write_suite_run(tmp_path, "e", "v", 0, student={"test_agreement": 0.9})
  write_suite_run(tmp_path, "e", "v", 1, student={"test_agreement": float("nan")})
  write_suite_run(tmp_path, "e", "v", 2, finished=False)
  cell = verdicts.load_cell(str(tmp_path), "e", "v", (0, 1, 2, 3), "student.test_agreement")
  assert cell.values == {0: 0.9}
  assert cell.problems[1].startswith("e/v/seed1: diverged")
  assert cell.problems[2] == "e/v/seed2: unfinished"
  assert cell.problems[3] == "e/v/seed3: not run"
  check = verdicts.Check("agreement < 95 %", cell, 0.95, -1)
  assert check.verdict == verdicts.INCOMPLETE


def test_differences_pair_seeds_and_carry_problems_of_either_side(tmp_path):
  for seed, (a, b) in enumerate(((0.9, 0.8), (0.7, 0.65), (0.6, 0.6))):
    write_suite_run(tmp_path, "e", "a", seed, student={"test_agreement": a})
    write_suite_run(tmp_path, "e", "b", seed, student={"test_agreement": b}, finished=seed != 2)
  a = verdicts.load_cell(str(tmp_path), "e", "a", SEEDS, "student.test_agreement")
  b = verdicts.load_cell(str(tmp_path), "e", "b", SEEDS, "student.test_agreement")
  diff = verdicts.difference(a, b)
  assert diff.values == pytest.approx({0: 0.1, 1: 0.05})
  assert list(diff.problems) == [2] and "e/b/seed2: unfinished" in diff.problems[2]


def test_mean_teacher_accuracy_and_missing_metric(tmp_path):
  write_suite_run(tmp_path, "e", "v", 0, teachers=[{"test_accuracy": 0.6}, {"test_accuracy": 0.8}])
  cell = verdicts.load_cell(str(tmp_path), "e", "v", (0,), "teachers.test_accuracy")
  assert cell.values == {0: pytest.approx(0.7)}
  cell = verdicts.load_cell(str(tmp_path), "e", "v", (0,), "student.cka_stage1")
  assert cell.problems == {0: "e/v/seed0: has no student.cka_stage1"}


def test_format_values_never_shows_a_number_for_no_runs():
  assert verdicts.format_values(np.array([])) == "no finished run"
  assert verdicts.format_values(np.array([0.5, 0.7])) == "60.00 ± 14.14 (n = 2)"
  assert verdicts.format_values(np.array([0.5])) == "50.00 (n = 1)"  # one seed: no spread


def test_checks_show_their_unit():
  cell = verdicts.Cell("e/v", {0: 0.01, 1: 0.03}, {})
  assert verdicts.Check("d", cell, 0.0, +1, unit="pp").ours() == "2.00 ± 1.41 pp (n = 2)"
  assert verdicts.Check("l", cell, 0.0, +1).ours() == "2.00 ± 1.41 % (n = 2)"
  assert verdicts.Check("r", cell, 0.0, +1, unit="").ours() == "0.020 ± 0.014 (n = 2)"
  empty = verdicts.Cell("e/v", {}, {0: "e/v/seed0: unfinished"})
  assert verdicts.Check("d", empty, 0.0, +1, unit="pp").ours() == "no finished run"
