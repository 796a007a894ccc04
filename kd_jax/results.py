"""One run's results.json: its flat form (metrics.jsonl, the report) and the table a run prints.

Kept apart from kd_jax/experiments/report.py, which reads and compares many runs, so that a run
imports only this.
"""

import math

# (key in results, column title, shown as percent)
_COLUMNS = (
    ("test_accuracy", "test acc %", True),
    ("test_nll", "test NLL", False),
    ("test_ece", "test ECE %", True),
    ("test_agreement", "test agree %", True),
    ("test_kl", "test KL", False),
    ("train_accuracy", "train acc %", True),
    ("train_agreement", "train agree %", True),
    ("train_kl", "train KL", False),
)


def flatten_results(results: dict) -> dict:
  """{'teachers': [..], 'ensemble': {..}, 'student': {..}} -> {'teacher0_test_accuracy': .., ...}."""
  flat = {}
  for i, entry in enumerate(results["teachers"]):
    flat.update({f"teacher{i}_{k}": v for k, v in entry.items()})
  for role in ("ensemble", "student"):
    flat.update({f"{role}_{k}": v for k, v in results[role].items()})
  return flat


def results_table(results: dict) -> str:
  rows = [(f"teacher {i}", entry) for i, entry in enumerate(results["teachers"])]
  rows += [(f"ensemble (m={len(results['teachers'])})", results["ensemble"]),
           ("student", results["student"])]
  header = ["model"] + [title for _, title, _ in _COLUMNS]
  lines = [header]
  for name, entry in rows:
    cells = [name]
    for key, _, percent in _COLUMNS:
      value = entry.get(key)
      cells.append("-" if value is None else "nan" if not math.isfinite(value) else
                   f"{100 * value:.2f}" if percent else f"{value:.4f}")
    lines.append(cells)
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  text = ["  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in
                    enumerate(zip(line, widths))) for line in lines]
  text.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(text)
