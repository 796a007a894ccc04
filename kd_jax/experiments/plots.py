"""Every plot of the report (over variants of runs) and of the suite's claims (per-seed values).

matplotlib is imported only by `pyplot()`, when a report draws: tables alone never load it. Points
are the mean over seeds with the sample std as error bar; a single seed has no spread and draws no
bar (kd_jax/experiments/stats.py). A metric without values draws nothing. Files are written whole
(kd_jax/files.py).
"""

import math
import os
import textwrap

import numpy as np

from kd_jax import files
from kd_jax.experiments import runs as runs_lib
from kd_jax.experiments.stats import error_bar, is_number


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _colors(plt, count: int) -> list:
  cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
  return [cmap(i % cmap.N) for i in range(count)]


_LEGEND_WIDTH = 40  # characters per legend line


def _legend_label(text: str) -> str:
  """Long labels (variants named by several config keys) wrapped into lines of _LEGEND_WIDTH
  characters, so that the legend beside the axes cannot squash them."""
  return textwrap.fill(text, _LEGEND_WIDTH, break_long_words=True, break_on_hyphens=False)


def _save(plt, fig, path: str, dpi: int) -> None:
  with files.atomic_path(path) as temporary:
    fig.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
  plt.close(fig)


def _finish(plt, fig, ax, path: str) -> None:
  """Saves a report figure with `ax`'s legend outside the axes, labels wrapped (variant names can
  be long)."""
  handles, labels = ax.get_legend_handles_labels()
  if handles:
    ax.legend(handles, [_legend_label(label) for label in labels], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  _save(plt, fig, path, dpi=120)


def _errorbar_line(ax, xs, values, **style) -> None:
  """Mean ± std of each x's per-seed values, as one line; x values without values are left out."""
  points = [(x, *error_bar(v)) for x, v in zip(xs, values) if np.size(v)]
  if points:
    x, mean, std = map(np.array, zip(*points))
    ax.errorbar(x, mean, yerr=std, capsize=3, **style)


# ---------------------------------------------------------------------------------------------------
# The paper's Fig. 3, for the report and for claim C2

ENSEMBLE_SIZE_TITLES = ("Fidelity vs ensemble size", "Accuracy vs ensemble size")


def ensemble_size(plt, path: str, series: dict, titles=ENSEMBLE_SIZE_TITLES) -> None:
  """Test agreement (left) and the test accuracy of student and teacher ensemble (right) against
  the teacher ensemble size m, one colour per series.

  `series`: {name: [(m, agreement values, student accuracy values, ensemble accuracy values)]},
  per-seed fractions for each m; a name ('' for the only series) starts its lines' labels.
  """
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  sizes = sorted({point[0] for points in series.values() for point in points})
  for (name, points), color in zip(series.items(), _colors(plt, len(series))):
    points = sorted(points, key=lambda point: point[0])
    prefix = f"{name}: " if name else ""
    for ax, column, style, label in ((left, 1, "-o", "test agreement"),
                                     (right, 2, "-o", "student"),
                                     (right, 3, "--s", "teacher ensemble")):
      _errorbar_line(ax, [point[0] for point in points], [point[column] for point in points],
                     fmt=style, color=color, label=prefix + label)
  left.set(xlabel="teacher ensemble size m", ylabel="test agreement (%)", title=titles[0])
  right.set(xlabel="teacher ensemble size m", ylabel="test accuracy (%)", title=titles[1])
  for ax in (left, right):
    ax.set_xticks(sizes)
    ax.grid(alpha=0.3)
  handles, labels = left.get_legend_handles_labels()
  if handles:
    left.legend(handles, [_legend_label(label) for label in labels], fontsize=8)
  _finish(plt, fig, right, path)


# ---------------------------------------------------------------------------------------------------
# The report's plots, over variants

_SHORT_NAME = 16  # characters of a variant name that fit next to its point


def _percent(variant, key: str) -> tuple:
  return error_bar(variant.values(runs_lib.paper_metric(key)))


def _scatter(plt, variants, x_key: str, y_key: str, path: str, *, xlabel: str, ylabel: str,
             title: str, diagonal: bool = False) -> bool:
  """Mean ± std of two metrics, one labelled point per variant; False when no variant has both."""
  points = [(v, color, _percent(v, x_key), _percent(v, y_key))
            for v, color in zip(variants, _colors(plt, len(variants)))]
  points = [p for p in points if not (math.isnan(p[2][0]) or math.isnan(p[3][0]))]
  if not points:
    return False
  fig, ax = plt.subplots(figsize=(7, 5.5))
  # Long names (config keys) would overlap next to the points: number those, name them in the legend.
  numbered = any(len(p[0].name) > _SHORT_NAME for p in points)
  for i, (variant, color, (x, xerr), (y, yerr)) in enumerate(points, 1):
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, elinewidth=1,
                alpha=0.85, label=f"{i}: {variant.name}" if numbered else variant.name)
    ax.annotate(str(i) if numbered else variant.name, (x, y), textcoords="offset points",
                xytext=(5, 5), fontsize=9 if numbered else 8)
  ax.margins(0.15)
  if diagonal:
    # Same range on both axes around the points, fixed before the (infinite) y = x line is drawn.
    ax.autoscale_view()
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    low, high = min(x_low, y_low), max(x_high, y_high)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.axline((0, 0), (100, 100), color="gray", linestyle="--", linewidth=1, label="y = x")
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path)
  return True


def _mean(variant, key: str) -> float:
  values = variant.values(runs_lib.paper_metric(key))
  return float(np.mean(values)) if values.size else math.nan


def plot_accuracy_vs_flops(plt, variants, path: str) -> bool:
  """The compression picture: student test accuracy and agreement (mean ± std over seeds) against
  the student's FLOPs per image, one point per variant, with each variant's single teacher and
  ensemble marked at their FLOPs; False when no run measured FLOPs."""
  points = [(v, _mean(v, "student_flops_per_image")) for v in variants]
  points = [(v, flops) for v, flops in points if math.isfinite(flops)]
  if not points:
    return False
  fig, ax = plt.subplots(figsize=(7, 5.5))
  for (variant, flops), color in zip(points, _colors(plt, len(points))):
    (accuracy, accuracy_err), (agreement, agreement_err) = (
        _percent(variant, "student_test_accuracy"), _percent(variant, "test_agreement"))
    ax.errorbar(flops, accuracy, yerr=accuracy_err, fmt="o", color=color, capsize=3,
                label=_legend_label(f"{variant.name}: student accuracy"))
    ax.errorbar(flops, agreement, yerr=agreement_err, fmt="^", color=color, capsize=3, alpha=0.6,
                label=_legend_label(f"{variant.name}: agreement"))
    for key, accuracy_key, marker, role in (
        ("teacher_flops_per_image", "teacher_mean_test_accuracy", "s", "teacher"),
        ("ensemble_flops_per_image", "ensemble_test_accuracy", "*", "ensemble")):
      x, (y, _) = _mean(variant, key), _percent(variant, accuracy_key)
      if math.isfinite(x) and math.isfinite(y):
        ax.plot(x, y, marker, color=color, markersize=10, markerfacecolor="none")
        ax.annotate(role, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
  ax.set_xscale("log")
  ax.set(xlabel="FLOPs per image (forward pass, log scale)", ylabel="test accuracy / agreement (%)",
         title="What distillation kept against what it costs")
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path)
  return True


_PAIR_MARKERS = "osD^v<>pP*Xh"


def methods_agreement_vs_accuracy(plt, path: str, points) -> None:
  """The methods benchmark's picture: each method's test agreement with its teacher against its
  test accuracy (mean ± std over seeds), a colour per method and a marker per teacher -> student
  pair. `points`: [(method, pair, (accuracy %, std), (agreement %, std))]."""
  methods = list(dict.fromkeys(p[0] for p in points))
  pairs = list(dict.fromkeys(p[1] for p in points))
  colors = dict(zip(methods, _colors(plt, len(methods))))
  markers = {pair: _PAIR_MARKERS[i % len(_PAIR_MARKERS)] for i, pair in enumerate(pairs)}
  fig, ax = plt.subplots(figsize=(7.5, 5.5))
  for method, pair, (x, xerr), (y, yerr) in points:
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[pair], color=colors[method], capsize=3,
                elinewidth=1, alpha=0.85)
    ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
  for method in methods:  # legend entries: colours name methods, markers name pairs
    ax.plot([], [], "o", color=colors[method], label=method)
  if len(pairs) > 1:
    for pair in pairs:
      ax.plot([], [], markers[pair], color="gray", label=pair)
  ax.margins(0.15)
  ax.set(xlabel="student test accuracy, last epoch (%)",
         ylabel="test agreement with the teacher (%)",
         title="Fidelity vs generalization, per method" + (f" ({pairs[0]})" if len(pairs) == 1
                                                           else ""))
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path)


ENSEMBLE_SIZE_KEY = "teacher.ensemble_size"
_ENSEMBLE_SIZE_METRICS = ("test_agreement", "student_test_accuracy", "ensemble_test_accuracy")


def plot_ensemble_size(plt, variants, path: str) -> bool:
  """ensemble_size() over variants, one series per setting of the other differing keys; False
  unless the variants have at least two ensemble sizes."""
  sizes = {v.common(ENSEMBLE_SIZE_KEY) for v in variants}
  if None in sizes or len(sizes) < 2:
    return False
  series = {name: [(v.common(ENSEMBLE_SIZE_KEY),
                    *(v.values(runs_lib.paper_metric(key)) for key in _ENSEMBLE_SIZE_METRICS))
                   for v in members]
            for name, members in runs_lib.series_by_other_keys(variants, ENSEMBLE_SIZE_KEY).items()}
  ensemble_size(plt, path, series)
  return True


def plot_against_key(plt, variants, key: str, path: str, *, xlabel: str, title: str,
                     log_x: bool = False) -> bool:
  """Train and test agreement (mean ± std) against a numeric config key, one pair of lines per
  setting of the other differing keys; False unless the key takes at least two values."""
  values = [v.common(key) for v in variants]
  if any(not is_number(x) for x in values) or len(set(values)) < 2:
    return False
  series = runs_lib.series_by_other_keys(variants, key)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (name, members), color in zip(series.items(), _colors(plt, len(series))):
    xs = [v.common(key) for v in members]
    prefix = f"{name}: " if name else ""
    for metric, style, label in (("train_agreement", "-o", "train agreement"),
                                 ("test_agreement", "--s", "test agreement")):
      _errorbar_line(ax, xs, [v.values(runs_lib.paper_metric(metric)) for v in members],
                     fmt=style, color=color, label=prefix + label)
  if log_x:
    ax.set_xscale("log")
  ax.set(xlabel=xlabel, ylabel="agreement with the teacher (%)", title=title)
  ax.grid(alpha=0.3)
  _finish(plt, fig, ax, path)
  return True


def _mean_curve(variant, field: str):
  """(steps, mean over the variant's runs) of one training-record field, per logged step."""
  per_step = {}
  for run in variant.runs:
    for record in runs_lib.training_records(run.workdir):
      if is_number(record.get(field)):
        per_step.setdefault(record["step"], []).append(record[field])
  steps = sorted(per_step)
  return np.array(steps), np.array([np.mean(per_step[s]) for s in steps])


def plot_training_curves(plt, variants, path: str) -> bool:
  curves = [(v, color, _mean_curve(v, "loss"), _mean_curve(v, "agreement"))
            for v, color in zip(variants, _colors(plt, len(variants)))]
  curves = [c for c in curves if c[2][0].size]
  if not curves:
    return False
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for variant, color, (loss_steps, loss), (agree_steps, agreement) in curves:
    # A line needs two points: a run that logged once (a short run) is drawn as a marker.
    left.plot(loss_steps, loss, color=color, label=variant.name,
              marker="o" if loss_steps.size < 2 else None)
    if agree_steps.size:
      right.plot(agree_steps, 100 * agreement, color=color, label=variant.name,
                 marker="o" if agree_steps.size < 2 else None)
  # Losses of different temperatures differ by tau^2: a log axis keeps them all readable.
  if all((c[2][1] > 0).all() for c in curves):
    left.set_yscale("log")
  left.set(xlabel="student step", ylabel="training loss", title="Student loss")
  right.set(xlabel="student step", ylabel="batch agreement (%)",
            title="Agreement on augmented training batches (running)")
  for ax in (left, right):
    ax.grid(alpha=0.3)
  _finish(plt, fig, right, path)
  return True


def write_report_plots(variants, out_dir: str) -> list:
  """Writes the report's plots that the data supports; returns their file names."""
  plt = pyplot()
  plots = {
      "agreement_vs_accuracy.png": lambda path: _scatter(
          plt, variants, "test_agreement", "student_test_accuracy", path,
          xlabel="test agreement with teacher (%)", ylabel="student test accuracy (%)",
          title="Fidelity vs generalization"),
      "agreement_vs_ensemble_size.png": lambda path: plot_ensemble_size(plt, variants, path),
      "train_vs_test_agreement.png": lambda path: _scatter(
          plt, variants, "test_agreement", "train_agreement", path,
          xlabel="test agreement (%)", ylabel="train agreement (%)",
          title="Agreement on the distillation (train) set vs the test set", diagonal=True),
      "training_curves.png": lambda path: plot_training_curves(plt, variants, path),
      "accuracy_vs_flops.png": lambda path: plot_accuracy_vs_flops(plt, variants, path),
      # The paper's Fig. 6 (initialization interpolation) and Fig. 5 (training length).
      "agreement_vs_init_lambda.png": lambda path: plot_against_key(
          plt, variants, "student.init_lambda", path,
          xlabel="student init lambda (lambda teacher + (1 - lambda) random)",
          title="Agreement vs initialization interpolation"),
      "agreement_vs_student_epochs.png": lambda path: plot_against_key(
          plt, variants, "student.epochs", path, xlabel="student epochs",
          title="Agreement vs training length", log_x=True),
  }
  written = []
  for name, draw in plots.items():
    path = os.path.join(out_dir, name)
    if draw(path):
      written.append(name)
    elif os.path.exists(path):
      os.remove(path)  # left by an earlier report of other runs: it would no longer match the table
  return written


# ---------------------------------------------------------------------------------------------------
# The claims' plots, over per-seed values

_CLAIM_DPI = 110


def _finish_claim(plt, fig, ax, path: str) -> None:
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # none when no run of the claim has finished
    ax.legend(fontsize=8)
  _save(plt, fig, path, dpi=_CLAIM_DPI)


def bar_plot(plt, path: str, labels, bars: dict, title: str, line: float = None,
             ylabel: str = "%") -> None:
  """Grouped bars: one group per label, one bar per entry of `bars` ({name: per-seed fractions for
  each label}), the mean ± std in percent, each seed as a dot; 'no run' where a bar has no values.
  `line` draws a dashed level (a fraction), e.g. a claim's threshold."""
  fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) * len(bars) ** 0.5 + 2), 4.2))
  width = 0.8 / len(bars)
  for j, (name, per_label) in enumerate(bars.items()):
    for i, values in enumerate(per_label):
      x = i + (j - (len(bars) - 1) / 2) * width
      if np.size(values):
        mean, std = error_bar(values)
        ax.bar(x, mean, width, yerr=std, capsize=3, color=f"C{j}", label=name if i == 0 else None)
        ax.plot([x] * np.size(values), 100 * np.asarray(values), "k.", markersize=3)
      else:
        ax.text(x, 0, "no run", rotation=90, ha="center", va="bottom", fontsize=7)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
  low = min([100 * v for per_label in bars.values() for values in per_label for v in values] or [0])
  ax.set_ylim(max(0.0, low - 10), 101)
  if line is not None:
    ax.axhline(100 * line, color="gray", linestyle="--", linewidth=1, label=f"{100 * line:g} %")
  ax.set(ylabel=ylabel, title=title)
  _finish_claim(plt, fig, ax, path)


def line_plot(plt, path: str, xs, series: dict, *, xlabel: str, ylabel: str, title: str,
              line: float = None, log_x: bool = False) -> None:
  """Mean ± std in percent against x, one line per entry of `series` ({name: per-seed fractions
  for each x})."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for i, (name, per_x) in enumerate(series.items()):
    _errorbar_line(ax, xs, per_x, fmt="-o", color=f"C{i}", label=name)
  if line is not None:
    ax.axhline(100 * line, color="gray", linestyle="--", linewidth=1, label=f"{100 * line:g} %")
  if log_x:
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}x" for x in xs])
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  _finish_claim(plt, fig, ax, path)
