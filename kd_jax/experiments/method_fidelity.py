"""What the methods benchmark shows about fidelity: each distillation method's student against the
labels-only student (ce) and vanilla KD (kd) of the same pair, by a rule computed here.

The question is the paper's: does a method that generalizes better also match its teacher better?
For each method and reference, the statistic is the per-seed difference (method minus reference)
of the student's test agreement with its teacher, and beside it, as the control that separates
fidelity from accuracy, the same difference of the student's top-1. Seeds pair up because a
benchmark sweep trains one teacher per seed and every student of that seed distills it. The
test is verdicts.decide's one-sided t test (FIDELITY_RULE), once per direction.
"""

import dataclasses
import math

import numpy as np

from kd_jax.experiments.runs import result_value
from kd_jax.experiments.stats import mean_std_text
from kd_jax.experiments.verdicts import CONTRADICTS, HOLDS, LEVEL, decide

REFERENCES = ("ce", "kd")  # the labels-only student and vanilla KD
AGREEMENT, ACCURACY = "student.test_agreement", "student.test_accuracy"
HIGHER, LOWER, NO_DIFFERENCE, TOO_FEW = "higher", "lower", "no difference shown", "too few seeds"

FIDELITY_RULE = (
    "Each distillation method is compared with two students of the same pair: ce (the labels "
    "alone) and kd (vanilla KD). The statistic is the per-seed difference, method minus "
    "reference, in percentage points (pp), of the student's test agreement with its teacher and, "
    "as the control that tells fidelity from accuracy, of its top-1 at the last epoch; the seeds "
    "pair up because each seed's students distill the same teacher. With the n seeds both have, "
    f"a difference is **{HIGHER}** if a one-sided Student's t test at {100 * LEVEL:g} % with "
    f"n - 1 degrees of freedom finds it > 0, **{LOWER}** if the mirror-image test finds it < 0, "
    f"and **{NO_DIFFERENCE}** otherwise (a two-sided test at {100 * (2 * LEVEL - 1):g} %; fewer "
    f"than 2 common seeds: {TOO_FEW}). Each comparison is tested on its own, with no correction "
    f"for the number of methods: of comparisons without a true difference, about "
    f"{100 * 2 * (1 - LEVEL):g} % come out {HIGHER} or {LOWER} by chance.")


def per_seed(variant, name: str) -> dict:
  """seed -> the finite value of results.json's `name` for each run of the variant."""
  values = {}
  for run in variant.runs:
    value = result_value(run.results, name)
    if value is not None and math.isfinite(value) and run.config.get("seed") is not None:
      values[run.config["seed"]] = value
  return values


def paired_differences(variant, reference, name: str) -> np.ndarray:
  """variant minus reference of `name`, one value per seed both have, in seed order."""
  a, b = per_seed(variant, name), per_seed(reference, name)
  return np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], dtype=np.float64)


def direction_of(differences: np.ndarray) -> str:
  """higher / lower / no difference shown / too few seeds, by FIDELITY_RULE."""
  if differences.size < 2:
    return TOO_FEW
  verdict = decide(differences, 0.0, +1)
  return {HOLDS: HIGHER, CONTRADICTS: LOWER}.get(verdict, NO_DIFFERENCE)


@dataclasses.dataclass
class Comparison:
  method: str
  reference: str
  agreement: np.ndarray  # per-seed differences, fractions
  accuracy: np.ndarray

  @property
  def agreement_direction(self) -> str:
    return direction_of(self.agreement)

  @property
  def accuracy_direction(self) -> str:
    return direction_of(self.accuracy)


def compare(rows) -> dict:
  """{pair: [Comparison]} for every method of a pair against each reference the pair has; rows
  have .pair, .method and .variant (kd_jax/experiments/benchmark.py's Row)."""
  by_pair = {}
  for row in rows:
    by_pair.setdefault(row.pair, []).append(row)
  comparisons = {}
  for pair, members in by_pair.items():
    references = {row.method: row.variant for row in members if row.method in REFERENCES}
    comparisons[pair] = [
        Comparison(row.method, name, paired_differences(row.variant, reference, AGREEMENT),
                   paired_differences(row.variant, reference, ACCURACY))
        for name, reference in references.items() for row in members
        if row.method not in REFERENCES or (name == "ce" and row.method == "kd")]
  return comparisons


def _pp(differences: np.ndarray) -> str:
  return (mean_std_text(differences, 100.0, 2) or "-") + f" (n = {differences.size})"


def _names(methods) -> str:
  return ", ".join(methods) if methods else "none"


def summary(comparisons) -> list:
  """Sentences, computed from the verdicts, of what the comparisons of one pair show."""
  lines = []
  for reference in REFERENCES:
    against = [c for c in comparisons if c.reference == reference]
    if not against:
      continue
    counts = {d: [c.method for c in against if c.agreement_direction == d]
              for d in (HIGHER, LOWER, NO_DIFFERENCE, TOO_FEW)}
    lines.append(
        f"- Test agreement against {reference}, {len(against)} methods: {HIGHER} "
        f"{len(counts[HIGHER])} ({_names(counts[HIGHER])}), {LOWER} {len(counts[LOWER])} "
        f"({_names(counts[LOWER])}), {NO_DIFFERENCE} {len(counts[NO_DIFFERENCE])}"
        + (f", {TOO_FEW} {len(counts[TOO_FEW])}" if counts[TOO_FEW] else "") + ".")
    accurate_not_faithful = [c.method for c in against if c.accuracy_direction == HIGHER
                             and c.agreement_direction != HIGHER]
    faithful_not_accurate = [c.method for c in against if c.agreement_direction == HIGHER
                             and c.accuracy_direction != HIGHER]
    lines.append(
        f"- Against {reference}, higher top-1 without higher agreement: "
        f"{_names(accurate_not_faithful)}; higher agreement without higher top-1: "
        f"{_names(faithful_not_accurate)}.")
  return lines


def agreement_range(rows) -> str:
  """The sentence of the lowest and highest mean test agreement among `rows` (one pair)."""
  means = sorted((float(np.mean(list(values.values()))), row.method) for row in rows
                 if (values := per_seed(row.variant, AGREEMENT)))
  if not means:
    return ""
  (low, low_method), (high, high_method) = means[0], means[-1]
  return (f"- Mean test agreement ranges from {100 * low:.2f} % ({low_method}) to "
          f"{100 * high:.2f} % ({high_method}).")


def markdown_section(rows) -> str:
  """The benchmark report's fidelity section: the rule, then per pair a table of the paired
  differences with their verdicts and the summary; '' where no pair has a reference."""
  comparisons = {pair: c for pair, c in compare(rows).items() if c}
  if not comparisons:
    return ""
  ranges = {pair: agreement_range([row for row in rows if row.pair == pair])
            for pair in comparisons}
  lines = ["## Fidelity across methods", "", FIDELITY_RULE, ""]
  for pair, members in comparisons.items():
    lines += [f"### {pair}: paired differences, method minus reference", "",
              "| method | reference | test agree (pp) | agreement | top-1 (pp) | top-1 |",
              "|---|---|---:|---|---:|---|"]
    lines += [f"| {c.method} | {c.reference} | {_pp(c.agreement)} | {c.agreement_direction} | "
              f"{_pp(c.accuracy)} | {c.accuracy_direction} |" for c in members]
    lines += ["", ranges[pair], *summary(members), ""]
  return "\n".join(lines)
