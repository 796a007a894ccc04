"""One run's results.json: its flat form (metrics.jsonl, the report) and the table a run prints.

The student's test_accuracy is its last epoch's (the final evaluation); with periodic evaluations
(config.evaluation.every_steps) results["student"] also has best_test_accuracy, the step and epoch
of that evaluation, the test agreement there, and last_test_accuracy / last_epoch to read it
against (kd_jax/metrics_log.py best_evaluation).

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
# Columns from results["compression"] (kd_jax/compression.py), shown when a run measured it:
# (key in a role's figures, column title, value -> cell).
_COMPRESSION_COLUMNS = (
    ("params", "params", lambda n: f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"),
    ("flops_per_image", "MFLOPs/img", lambda n: f"{n / 1e6:.3g}"),
    ("latency_batch1_s", "latency b1 ms", lambda s: f"{1e3 * s:.3g}"),
)
NOT_REPORTED = "not reported"  # a figure the backend does not give (None in results.json)


def _roles(results: dict) -> list:
  """[(flat prefix, entry)] of every teacher, the ensemble and the student of a results dict."""
  return ([(f"teacher{i}", entry) for i, entry in enumerate(results["teachers"])] +
          [(role, results[role]) for role in ("ensemble", "student")])


def flatten_results(results: dict) -> dict:
  """{'teachers': [..], 'ensemble': {..}, 'student': {..}} -> {'teacher0_test_accuracy': .., ...}.

  A "compression" section adds each role's figures the same way ('student_params', ...) and
  'student_vs_ensemble_<key>' for its ratios.
  """
  flat = {}
  sections = [results] + ([results["compression"]] if "compression" in results else [])
  for section in sections:
    for prefix, entry in _roles(section):
      flat.update({f"{prefix}_{k}": v for k, v in entry.items()})
  for key, value in results.get("compression", {}).get("student_vs_ensemble", {}).items():
    flat[f"student_vs_ensemble_{key}"] = value
  return flat


def _cell(value, formatted) -> str:
  return NOT_REPORTED if value is None else "nan" if not math.isfinite(value) else formatted(value)


def _times(ratio) -> str:
  return "?" if ratio is None else f"{ratio:.3g}x"


def _percent(fraction) -> str:
  return "?" if fraction is None else f"{100 * fraction:.1f}%"


def compression_summary(compression: dict) -> str:
  """One line: the student's size, FLOPs and latency as a fraction of the ensemble's, and what of
  the ensemble's accuracy and predictions it kept."""
  versus = compression["student_vs_ensemble"]
  return (f"student / ensemble: {_times(versus.get('params'))} parameters, "
          f"{_times(versus.get('flops_per_image'))} FLOPs, "
          f"{_times(versus.get('latency_batch1_s'))} latency at batch 1, "
          f"{_times(versus.get('latency_eval_batch_s'))} at batch "
          f"{compression['student'].get('eval_batch_size', '?')}; kept "
          f"{_percent(versus.get('accuracy_kept'))} of the ensemble's test accuracy, "
          f"{_percent(versus.get('test_agreement'))} test agreement")


def best_epoch_summary(student: dict) -> str:
  """One line: the student's test accuracy at the last epoch and the best over its periodic
  evaluations (results of config.evaluation.every_steps), with where the best was reached."""
  return (f"student test accuracy: {100 * student['last_test_accuracy']:.2f}% at the last epoch "
          f"({student['last_epoch']:g}), best {100 * student['best_test_accuracy']:.2f}% at epoch "
          f"{student['best_test_accuracy_epoch']:g} (step {student['best_test_accuracy_step']}, "
          f"test agreement {100 * student['best_test_agreement']:.2f}%), over "
          f"{student['test_evaluations']} evaluations")


def results_table(results: dict) -> str:
  """The table a run prints: a row per teacher, the ensemble and the student; with a "compression"
  section, its columns and a summary line (compression_summary) too."""
  names = [f"teacher {i}" for i in range(len(results["teachers"]))]
  names += [f"ensemble (m={len(results['teachers'])})", "student"]
  compression = results.get("compression")
  header = ["model"] + [title for _, title, _ in _COLUMNS]
  if compression:
    header += [title for _, title, _ in _COMPRESSION_COLUMNS]
  lines = [header]
  for row, (name, (_, entry)) in enumerate(zip(names, _roles(results))):
    cells = [name]
    for key, _, percent in _COLUMNS:
      value = entry.get(key)
      cells.append("-" if value is None else "nan" if not math.isfinite(value) else
                   f"{100 * value:.2f}" if percent else f"{value:.4f}")
    if compression:
      figures = _roles(compression)[row][1]
      cells += [_cell(figures[key], formatted) if key in figures else "-"
                for key, _, formatted in _COMPRESSION_COLUMNS]
    lines.append(cells)
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  text = ["  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in
                    enumerate(zip(line, widths))) for line in lines]
  text.insert(1, "  ".join("-" * w for w in widths))
  if "best_test_accuracy" in results["student"]:
    text.append(best_epoch_summary(results["student"]))
  if compression:
    text.append(compression_summary(compression))
  return "\n".join(text)
