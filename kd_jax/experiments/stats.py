"""Statistics over seeds, shared by the report's tables and plots and the suite's verdicts.

A metric of a variant is a sample of one value per seed. Its spread is the sample standard deviation
(ddof = 1), which needs two values: a single seed has no spread, so its std is NaN (not 0, which
would claim that seeds agree exactly), shown as nothing in text ("61.20", no "± ..."), "nan" in CSV
files, and no error bar in plots. No values at all give a NaN mean as well.
"""

import math

import numpy as np


def is_number(value) -> bool:
  """An int or float (a bool is neither, though Python counts it as an int)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def mean_std(values) -> tuple:
  """(mean, sample std) of per-seed values; std NaN for fewer than two values, both NaN for none."""
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def mean_std_text(values, scale: float, digits: int, significant: bool = False) -> str:
  """'mean ± std' of scale * values with `digits` decimals (`significant`: digits significant
  figures, for counts and seconds), just 'mean' for one value (no spread); '' for none."""
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return ""
  mean, std = mean_std(values)
  form = f".{digits}{'g' if significant else 'f'}"
  text = f"{scale * mean:{form}}"
  return text if math.isnan(std) else f"{text} ± {scale * std:{form}}"


def error_bar(values, scale: float = 100.0) -> tuple:
  """(mean, std) of scale * values for a plot: an error bar of 0 (none) where there is no spread."""
  mean, std = mean_std(values)
  return scale * mean, 0.0 if math.isnan(std) else scale * std
