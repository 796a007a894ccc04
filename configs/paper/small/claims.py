"""The claims of Stanton et al. (2021) that this suite checks, C1-C8, as data for the suite runner.

  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --seeds=0,1,2

get_claims(suite) maps each claim to checks over the runs of this folder's experiment files (their
experiment and variant names), with the thresholds for the paper's words, a table of the claim's
numbers and the paper's figure for it. The verdict rule is kd_jax/experiments/verdicts.py's; the
suite runner (kd_jax/experiments/suite.py) reads this file from the --suite folder and writes one
row and one plot per claim to <workdir>/report/results.md. docs/reproduction.md explains each choice.
"""

from kd_jax.experiments import plots
from kd_jax.experiments import verdicts
from kd_jax.experiments.verdicts import Check, Claim, combine_cells, difference

TEST_AGREE, TRAIN_AGREE = "student.test_agreement", "student.train_agreement"
STUDENT_ACC, TEACHER_ACC = "student.test_accuracy", "ensemble.test_accuracy"
WELL_BELOW = 0.95  # "well below 100 %"
NEAR_ALL = 0.99  # "about 100 %", "over 99 %"
SAME = 0.01  # "does not change / raise": |difference| < 1 point (equivalence margin)
# "only modestly": below the largest agreement gain the paper reports for any change of the
# distillation data, MixUp's 84.5 -> 86 % (Fig. 4).
MODEST = 0.015

C4_VARIANTS = ("baseline", "mixup", "noise", "ood_cifar10", "baseline_steps_ood", "recycle_d0",
               "recycle_d0_steps", "recycle_d1", "recycle_d0_d1")
FEW_LABELS_VARIANTS = ("unlabelled10k", "unlabelled30k", "unlabelled60k")
_MAIN_COLUMNS = (("teacher acc %", TEACHER_ACC), ("student acc %", STUDENT_ACC),
                 ("test agree %", TEST_AGREE), ("train agree %", TRAIN_AGREE))


def _bar_plot(suite, experiment, variants, metrics, title, **options):
  """A claim's plot: plots.bar_plot of `metrics` ((bar name, metric)) for `variants` of
  `experiment`."""
  def plot(plt, path):
    bars = {name: [suite.cell(experiment, variant, metric).array() for variant in variants]
            for name, metric in metrics}
    plots.bar_plot(plt, path, list(variants), bars, title, **options)
  return plot


def _line_plot(xs, series, **options):
  """A claim's plot: plots.line_plot of `series` ({line name: [cell for each x]})."""
  def plot(plt, path):
    plots.line_plot(plt, path, xs, {name: [cell.array() for cell in cells]
                                    for name, cells in series.items()}, **options)
  return plot


def _ensemble_plot(suite, experiment, sizes):
  """C2's plot, the paper's Fig. 3: plots.ensemble_size for tau 1 and 4."""
  def plot(plt, path):
    series = {f"tau {tau}": [(m, *(suite.cell(experiment, f"tau{tau}_m{m}", metric).array()
                                   for metric in (TEST_AGREE, STUDENT_ACC, TEACHER_ACC)))
                             for m in sizes]
              for tau in (1, 4)}
    plots.ensemble_size(plt, path, series, titles=("C2: fidelity vs ensemble size (Fig. 3)",
                                                   "C2: accuracy vs ensemble size"))
  return plot


def _not_planned(label):
  """An empty cell for a point of a claim's plot that the suite has no run for (left out)."""
  return verdicts.Cell(label=label, values={}, problems={})


def get_claims(suite: verdicts.Suite) -> list:
  """C1-C8 over the runs of this suite in `suite` (its workdir and seeds)."""
  c = suite.cell
  es, dd, ii, ti, tl, fl = ("ensemble_size", "distillation_data", "init_interpolation",
                            "teacher_initial", "training_length", "few_labels")
  out = []

  out.append(Claim(
      "C1", "Self-distillation: accuracy close to the teacher's, agreement well below 100 %",
      "Fig. 1 / section 4, ResNet-56 self-distillation on CIFAR-100: student accuracy about the "
      "teacher's, test agreement about 72-75 %.",
      checks=[
          Check("student acc - teacher acc (m = 1, tau 4) > -3 pp",
                difference(c(es, "tau4_m1", STUDENT_ACC), c(es, "tau4_m1", TEACHER_ACC)),
                -0.03, +1, unit="pp"),
          Check(f"test agreement (m = 1, tau 4) < {100 * WELL_BELOW:g} %",
                c(es, "tau4_m1", TEST_AGREE), WELL_BELOW, -1),
      ],
      table=[suite.row(es, v, _MAIN_COLUMNS) for v in ("tau1_m1", "tau4_m1")],
      plot=_bar_plot(
          suite, es, ("tau1_m1", "tau4_m1"),
          (("teacher acc", TEACHER_ACC), ("student acc", STUDENT_ACC),
           ("test agreement", TEST_AGREE)),
          "C1: self-distillation (LeNet-5, Fashion-MNIST)")))

  sizes = (1, 3, 5)
  c2_checks = []
  for tau in (1, 4):
    c2_checks.append(Check(
        f"test agreement m = 5 - m = 1 (tau {tau}) > 0",
        difference(c(es, f"tau{tau}_m5", TEST_AGREE), c(es, f"tau{tau}_m1", TEST_AGREE)), 0.0, +1,
        unit="pp"))
    c2_checks.append(Check(
        f"student acc m = 5 - m = 3 (tau {tau}) < 1 pp (saturates)",
        difference(c(es, f"tau{tau}_m5", STUDENT_ACC), c(es, f"tau{tau}_m3", STUDENT_ACC)),
        0.01, -1, unit="pp"))
  c2_checks.append(Check(
      "student acc - teacher acc (m = 1, tau 1) > 0 (the paper says 'may')",
      difference(c(es, "tau1_m1", STUDENT_ACC), c(es, "tau1_m1", TEACHER_ACC)), 0.0, +1,
      unit="pp", carries=False))
  out.append(Claim(
      "C2", "Ensemble size: agreement rises with m, student accuracy saturates",
      "Fig. 3 (tau 1), 5x ResNet-56 on CIFAR-100: test agreement about 77.5 / 82.5 / 84.5 % for "
      "m = 1 / 3 / 5; student accuracy saturates near 75-76 %; with m = 1 the student beats the "
      "teacher.",
      checks=c2_checks,
      table=[suite.row(es, f"tau{tau}_m{m}", _MAIN_COLUMNS) for tau in (1, 4) for m in sizes],
      plot=_ensemble_plot(suite, es, sizes)))

  out.append(Claim(
      "C3", "Train agreement, on the distillation data itself, also well below 100 %",
      "Fig. 5 / section 6: ResNet-20 (LayerNorm) self-distillation reaches 78.9 % train agreement "
      "after 300 epochs.",
      checks=[Check(f"train agreement (m = {m}, tau 4) < {100 * WELL_BELOW:g} %",
                    c(es, f"tau4_m{m}", TRAIN_AGREE), WELL_BELOW, -1) for m in (1, 5)],
      table=[suite.row(es, f"tau4_m{m}", _MAIN_COLUMNS) for m in sizes],
      plot=_bar_plot(
          suite, es, [f"tau4_m{m}" for m in sizes],
          (("train agreement", TRAIN_AGREE), ("test agreement", TEST_AGREE)),
          "C3: agreement on the distillation (train) data vs test", line=WELL_BELOW)))

  base = lambda metric: c(dd, "baseline", metric)  # noqa: E731
  out.append(Claim(
      "C4", "Distillation data: MixUp helps accuracy more than agreement; noise and OOD lower "
      "agreement; data recycling helps agreement only modestly",
      "Fig. 4 / section 5, 5x ResNet-56 on CIFAR-100, tau 4: baseline test agreement 84.5 %, MixUp "
      "about 86 % with the best accuracy; noise and SVHN data lower agreement; D0 u D1 vs D0 helps "
      "little.",
      checks=[
          Check("MixUp: student acc - baseline > 0 (accuracy up)",
                difference(c(dd, "mixup", STUDENT_ACC), base(STUDENT_ACC)), 0.0, +1, unit="pp"),
          Check(f"MixUp: test agreement - baseline > -{100 * SAME:g} pp (agreement not down)",
                difference(c(dd, "mixup", TEST_AGREE), base(TEST_AGREE)), -SAME, +1, unit="pp"),
          Check("MixUp: (student acc gain) - (test agreement gain) over baseline > 0",
                combine_cells(lambda a, a0, g, g0: (a - a0) - (g - g0),
                              c(dd, "mixup", STUDENT_ACC), base(STUDENT_ACC),
                              c(dd, "mixup", TEST_AGREE), base(TEST_AGREE)), 0.0, +1,
                unit="pp"),
          Check("noise: test agreement - baseline < 0",
                difference(c(dd, "noise", TEST_AGREE), base(TEST_AGREE)), 0.0, -1, unit="pp"),
          Check("OOD (CIFAR-10 gray 28x28 appended): test agreement - baseline at the same steps < 0",
                difference(c(dd, "ood_cifar10", TEST_AGREE), c(dd, "baseline_steps_ood", TEST_AGREE)),
                0.0, -1, unit="pp"),
          Check("OOD: test agreement - baseline at the same epochs (more steps) < 0",
                difference(c(dd, "ood_cifar10", TEST_AGREE), base(TEST_AGREE)), 0.0, -1,
                unit="pp", carries=False),
          Check(f"recycling: test agreement D0 u D1 - D0 at the same steps < {100 * MODEST:g} pp "
                "(modest: below the paper's MixUp gain)",
                difference(c(dd, "recycle_d0_d1", TEST_AGREE),
                           c(dd, "recycle_d0_steps", TEST_AGREE)), MODEST, -1, unit="pp"),
          Check("recycling: test agreement D0 u D1 - D0 at the same epochs (half the steps) > 0",
                difference(c(dd, "recycle_d0_d1", TEST_AGREE), c(dd, "recycle_d0", TEST_AGREE)),
                0.0, +1, unit="pp", carries=False),
          Check("recycling: test agreement D1 - D0 (teachers on D0), equal within 1 pp",
                difference(c(dd, "recycle_d1", TEST_AGREE), c(dd, "recycle_d0", TEST_AGREE)),
                SAME, 0, unit="pp", carries=False),
      ],
      table=[suite.row(dd, v, _MAIN_COLUMNS) for v in
             C4_VARIANTS],
      plot=_bar_plot(
          suite, dd, C4_VARIANTS,
          (("student acc", STUDENT_ACC), ("test agreement", TEST_AGREE)),
          "C4: distillation data (3x LeNet-5 -> LeNet-5, tau 4)")))

  lambdas = tuple(f"{i / 8:g}" for i in range(8))
  train = [c(ii, f"lam{lam}", TRAIN_AGREE) for lam in lambdas]
  top = len(lambdas) - 1  # the largest lambda (below 1, where the student starts as the teacher)
  fixed = ("0.375", "0.625", "0.875")  # init_interpolation.py's fixed-rate runs

  def fixed_rate(lam):
    """The fixed-rate run's train agreement at `lam` (at 0 the (1 - lambda) rule is the fixed rate);
    an empty cell where none is planned."""
    if lam == "0":
      return train[0]
    if lam in fixed:
      return c(ii, f"lam{lam}_fixed", TRAIN_AGREE)
    return _not_planned(f"{ii}/lam{lam}_fixed")

  def sharpness(*values):
    """The largest rise between neighbouring lambdas, as a fraction of the rise from lambda = 0 to
    the largest lambda below 1 (on a uniform grid, so every step is the same width)."""
    rise = values[top] - values[0]
    steps = [values[i + 1] - values[i] for i in range(top)]
    return max(steps) / rise if rise > 0 else 0.0

  start_columns = (("start train agree %", "student.start_train_agreement"),)
  out.append(Claim(
      "C5", "Initialization interpolation: a sharp jump to about 100 % train agreement above some "
      "lambda",
      "Fig. 6, ResNet-20 (LayerNorm) on CIFAR-100, lr scaled by (1 - lambda): lambda <= 0.25 ends "
      "near 80 % train agreement, 0.375 at 97.6 %, >= 0.5 at >= 99.6 %.",
      checks=[
          Check(f"train agreement at lambda = 0 < {100 * (NEAR_ALL - 0.02):g} %", train[0],
                NEAR_ALL - 0.02, -1),
          Check(f"train agreement at lambda = {lambdas[top]} > {100 * NEAR_ALL:g} %", train[top],
                NEAR_ALL, +1),
          Check("largest rise between neighbouring lambdas / rise from 0 to "
                f"{lambdas[top]} > 0.5 (sharp)", combine_cells(sharpness, *train[:top + 1]), 0.5,
                +1, unit=""),
          Check("train agreement at lambda = 0.5 - at its start > 0 (distillation, not the start, "
                "gives it)", difference(c(ii, "lam0.5", TRAIN_AGREE),
                                        c(ii, "lam0.5", "student.start_train_agreement")),
                0.0, +1, unit="pp", carries=False),
          Check(f"fixed rate: train agreement at lambda = {lambdas[top]} > {100 * NEAR_ALL:g} %",
                c(ii, f"lam{lambdas[top]}_fixed", TRAIN_AGREE), NEAR_ALL, +1, carries=False),
      ],
      table=([suite.row(ii, f"lam{lam}", _MAIN_COLUMNS + start_columns) for lam in lambdas]
             + [suite.row(ii, f"lam{lam}_fixed", _MAIN_COLUMNS + start_columns) for lam in fixed]),
      plot=_line_plot(
          [float(lam) for lam in lambdas],
          {"train agreement (lr x (1 - lambda))": train,
           "train agreement at the start": [c(ii, f"lam{lam}", "student.start_train_agreement")
                                            for lam in lambdas],
           "train agreement (fixed lr)": [fixed_rate(lam) for lam in lambdas],
           "test agreement (lr x (1 - lambda))": [c(ii, f"lam{lam}", TEST_AGREE)
                                                 for lam in lambdas]},
          xlabel="interpolation lambda (student init = lambda teacher + (1 - lambda) random)",
          ylabel="agreement (%)", title="C5: train agreement vs initialization (Fig. 6)",
          line=NEAR_ALL),
      reduced_scale=(
          "a width-8 LayerNorm PreResNet-8 on 5,000 CIFAR-10 images for 15 student epochs (its "
          "teacher reaches about 48 % accuracy), where the faithful laptop version, width 16 and "
          "30 epochs, takes about 2.5 hours a seed (docs/reproduction.md).")))

  cka = [("CKA stage1", "student.cka_stage1"), ("CKA stage2", "student.cka_stage2")]
  out.append(Claim(
      "C6", "The teacher's initial weights as the student's start do not raise agreement",
      "Table 1, ResNet-20 on CIFAR-100, 10 trials: random init 77.2 % agreement (KL 0.836), "
      "teacher's initial weights 77.1 % (KL 0.838).",
      checks=[Check(f"test agreement teacher_initial - random, equal within {100 * SAME:g} pp",
                    difference(c(ti, "teacher_initial", TEST_AGREE), c(ti, "random", TEST_AGREE)),
                    SAME, 0, unit="pp"),
              Check("independent student's test agreement (the reference) < random init's",
                    difference(c(ti, "random", "student.independent_test_agreement"),
                               c(ti, "random", TEST_AGREE)), 0.0, -1, unit="pp", carries=False)],
      table=[suite.row(ti, v, _MAIN_COLUMNS + tuple(cka) + (
                 ("independent student agree %", "student.independent_test_agreement"),))
             for v in ("random", "teacher_initial")],
      plot=_bar_plot(
          suite, ti, ("random", "teacher_initial"),
          (("test agreement", TEST_AGREE),) + tuple((t, m) for t, m in cka),
          "C6: student init at random vs the teacher's initial weights (Table 1)",
          ylabel="% (agreement), CKA x 100")))

  sgd_x, adam_x = ("0.5", "1", "2", "4"), ("1", "2", "4")  # training_length.py's multiples
  no_run = _not_planned(f"{tl}/adam_0.5x")
  out.append(Claim(
      "C7", "Longer training raises train agreement slowly; Adam does not fix it",
      "Fig. 5, ResNet-20 (LayerNorm) self-distillation: train agreement 78.9 / 81.3 / 83.4 % after "
      "300 / 1k / 5k SGD epochs; Adam a bit worse.",
      checks=[
          Check("SGD train agreement 4x - 1x the base epochs > 0",
                difference(c(tl, "sgd_4x", TRAIN_AGREE), c(tl, "sgd_1x", TRAIN_AGREE)), 0.0, +1,
                unit="pp"),
          Check(f"SGD train agreement at 4x < {100 * NEAR_ALL:g} % (slowly)",
                c(tl, "sgd_4x", TRAIN_AGREE), NEAR_ALL, -1),
          Check(f"Adam train agreement at 4x < {100 * NEAR_ALL:g} % (no fix)",
                c(tl, "adam_4x", TRAIN_AGREE), NEAR_ALL, -1),
          Check("base schedule: SGD train agreement 2x - 1x < 1 pp (the base is on the slow part "
                "of the curve)",
                difference(c(tl, "sgd_2x", TRAIN_AGREE), c(tl, "sgd_1x", TRAIN_AGREE)), SAME, -1,
                unit="pp", carries=False),
      ],
      table=([suite.row(tl, f"sgd_{k}x", _MAIN_COLUMNS) for k in sgd_x]
             + [suite.row(tl, f"adam_{k}x", _MAIN_COLUMNS) for k in adam_x]
             + [suite.row(tl, "sgd_lr0.05_1x", _MAIN_COLUMNS)]),
      plot=_line_plot(
          [float(k) for k in sgd_x],
          {"SGD train agreement": [c(tl, f"sgd_{k}x", TRAIN_AGREE) for k in sgd_x],
           "Adam train agreement": [no_run] + [c(tl, f"adam_{k}x", TRAIN_AGREE) for k in adam_x]},
          xlabel="student epochs (multiples of the base schedule, 30 epochs)",
          ylabel="train agreement (%)",
          title="C7: train agreement vs training length (Fig. 5)", log_x=True)))

  out.append(Claim(
      "C8", "Distillation works with a simple teacher and plenty of same-distribution data",
      "Section 5: LeNet-5 teacher on 200 MNIST images (84-86 % accuracy), distilled on EMNIST: the "
      "student exceeds 99 % test agreement.",
      checks=[
          Check("test agreement 60k - 10k unlabelled images (same steps) > 0",
                difference(c(fl, "unlabelled60k", TEST_AGREE), c(fl, "unlabelled10k", TEST_AGREE)),
                0.0, +1, unit="pp"),
          Check("test agreement 60k - C1's self-distillation (m = 1, tau 4) > 0",
                difference(c(fl, "unlabelled60k", TEST_AGREE), c(es, "tau4_m1", TEST_AGREE)),
                0.0, +1, unit="pp"),
          Check("test agreement 30k - 10k unlabelled images > 0",
                difference(c(fl, "unlabelled30k", TEST_AGREE), c(fl, "unlabelled10k", TEST_AGREE)),
                0.0, +1, unit="pp", carries=False),
          Check(f"test agreement at 60k > {100 * NEAR_ALL:g} % (if reached)",
                c(fl, "unlabelled60k", TEST_AGREE), NEAR_ALL, +1, carries=False),
      ],
      table=[suite.row(fl, v, _MAIN_COLUMNS) for v in FEW_LABELS_VARIANTS],
      plot=_bar_plot(
          suite, fl, FEW_LABELS_VARIANTS,
          (("teacher acc", TEACHER_ACC), ("student acc", STUDENT_ACC),
           ("test agreement", TEST_AGREE)),
          "C8: teacher from 200 labels, student on 10k-60k unlabelled images", line=NEAR_ALL)))
  return out
