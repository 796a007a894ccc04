"""The benchmark's fidelity rule (kd_jax/experiments/method_fidelity.py): paired per-seed
differences against ce and kd, each decided by a one-sided t test in either direction, checked
against scipy's paired t test; the verdicts, the summary and the report section on numbers built to
come out higher, lower and undecided."""

import numpy as np
import pytest
from scipy import stats

from kd_jax.experiments import benchmark, method_fidelity
from kd_jax.experiments.method_fidelity import HIGHER, LOWER, NO_DIFFERENCE, TOO_FEW
from kd_jax.experiments.runs import Run, Variant

PAIR = "resnet20 -> resnet8"


def _variant(name, agreement, accuracy, seeds=None):
  seeds = range(len(agreement)) if seeds is None else seeds
  method = {"distill.method": "paper", "distill.alpha": 1.0} if name == "ce" else {
      "distill.method": name}
  config = {"teacher.model.name": "resnet20", "student.model.name": "resnet8", **method}
  return Variant(name=name, runs=[
      Run(workdir=f"/runs/{name}/seed{s}", config={"seed": s, **config},
          results={"student": {"test_agreement": g, "test_accuracy": a}})
      for s, g, a in zip(seeds, agreement, accuracy)])


def _rows(variants):
  return [benchmark.Row(PAIR, name, variant) for name, variant in variants.items()]


KD_AGREEMENT, KD_ACCURACY = np.array([0.74, 0.70, 0.72]), np.array([0.44, 0.42, 0.43])
VARIANTS = {
    "ce": _variant("ce", KD_AGREEMENT - [0.10, 0.12, 0.11], KD_ACCURACY - [0.01, 0.00, 0.01]),
    "kd": _variant("kd", KD_AGREEMENT, KD_ACCURACY),
    # Both higher than kd, by about the same amount on every seed.
    "faithful": _variant("faithful", KD_AGREEMENT + [0.05, 0.06, 0.055],
                         KD_ACCURACY + [0.02, 0.025, 0.022]),
    # Consistently lower agreement, top-1 undecided.
    "unfaithful": _variant("unfaithful", KD_AGREEMENT - [0.04, 0.05, 0.045],
                           KD_ACCURACY + [0.03, -0.03, 0.0]),
    # Higher top-1 with the same agreement: accuracy without fidelity.
    "accurate": _variant("accurate", KD_AGREEMENT + [0.03, -0.03, 0.001],
                         KD_ACCURACY + [0.04, 0.05, 0.045]),
    # One seed only: no test.
    "single": _variant("single", [0.9], [0.5]),
}


def _by_method(comparisons, reference):
  return {c.method: c for c in comparisons[PAIR] if c.reference == reference}


def test_differences_pair_up_by_seed_and_skip_missing_seeds():
  kd = VARIANTS["kd"]
  partial = _variant("partial", [0.8, 0.9], [0.5, 0.6], seeds=[2, 0])
  assert method_fidelity.paired_differences(partial, kd, method_fidelity.AGREEMENT) == (
      pytest.approx([0.9 - 0.74, 0.8 - 0.72]))


def test_verdicts_of_methods_built_to_be_higher_lower_and_undecided():
  against_kd = _by_method(method_fidelity.compare(_rows(VARIANTS)), "kd")
  assert set(against_kd) == {"faithful", "unfaithful", "accurate", "single"}
  assert [against_kd["faithful"].agreement_direction,
          against_kd["faithful"].accuracy_direction] == [HIGHER, HIGHER]
  assert [against_kd["unfaithful"].agreement_direction,
          against_kd["unfaithful"].accuracy_direction] == [LOWER, NO_DIFFERENCE]
  assert [against_kd["accurate"].agreement_direction,
          against_kd["accurate"].accuracy_direction] == [NO_DIFFERENCE, HIGHER]
  assert against_kd["single"].agreement_direction == TOO_FEW
  against_ce = _by_method(method_fidelity.compare(_rows(VARIANTS)), "ce")
  assert against_ce["kd"].agreement_direction == HIGHER  # kd against ce, not against itself
  assert against_ce["kd"].agreement == pytest.approx([0.10, 0.12, 0.11])


def test_the_direction_is_scipys_paired_t_test_at_95_percent_in_either_direction():
  rng = np.random.default_rng(3)
  seen = set()
  for _ in range(300):
    n = int(rng.integers(2, 6))
    reference = rng.uniform(0.6, 0.8, n)
    method = reference + rng.normal(rng.normal(0, 0.02), 0.02, n)
    differences = method - reference
    greater = stats.ttest_rel(method, reference, alternative="greater").pvalue < 0.05
    less = stats.ttest_rel(method, reference, alternative="less").pvalue < 0.05
    expected = HIGHER if greater else LOWER if less else NO_DIFFERENCE
    assert method_fidelity.direction_of(differences) == expected, differences
    seen.add(expected)
  assert seen == {HIGHER, LOWER, NO_DIFFERENCE}


def test_the_summary_names_the_methods_of_each_verdict():
  against_kd = [c for c in method_fidelity.compare(_rows(VARIANTS))[PAIR] if c.reference == "kd"]
  lines = method_fidelity.summary(against_kd)
  assert lines[0] == (f"- Test agreement against kd, 4 methods: {HIGHER} 1 (faithful), {LOWER} 1 "
                      f"(unfaithful), {NO_DIFFERENCE} 1, {TOO_FEW} 1.")
  assert lines[1] == ("- Against kd, higher top-1 without higher agreement: accurate; higher "
                      "agreement without higher top-1: none.")


def test_the_benchmark_report_carries_the_rule_and_a_row_per_comparison():
  document = benchmark.markdown_document(list(VARIANTS.values()))
  section = document.split("## Fidelity across methods")[1]
  assert method_fidelity.FIDELITY_RULE in section
  rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
  # Against ce: kd and the four others; against kd: the four others; and the header.
  assert len(rows) == 1 + 5 + 4
  low, high = 100 * (KD_AGREEMENT - [0.10, 0.12, 0.11]).mean(), 90.0  # ce's and single's
  assert f"ranges from {low:.2f} % (ce) to {high:.2f} % (single)." in section
  faithful = next(line for line in rows if line.startswith("| faithful | kd |"))
  differences = 100 * np.array([0.05, 0.06, 0.055])
  assert (f"{differences.mean():.2f} ± {differences.std(ddof=1):.2f} (n = 3) | {HIGHER}"
          in faithful)


def test_no_section_without_a_reference_method():
  variants = {name: VARIANTS[name] for name in ("faithful", "unfaithful")}
  assert method_fidelity.markdown_section(_rows(variants)) == ""
