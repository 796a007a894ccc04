"""What a distillation step does, as one frozen description: `DistillSpec`.

kd_jax.train.make_distill_step(student, teacher, tx, spec, mesh) compiles the step that `spec`
describes. The spec fixes, once, every choice that changes the step's program:

- where the batch comes from: drawn on the device from (rng, step) (`streamed=False`), or handed in
  from the host (`streamed=True`, kd_jax/study/streamed.py);
- where the teacher signal comes from: the stacked ensemble run inside the step on the same augmented
  batch (`TEACHERS_IN_STEP`), or a table of the ensemble's logits on the distillation set computed
  once before (`CACHED_LOGITS`, only when the distillation images never change);
- which extra rows join the real ones: none, out-of-distribution images replacing part of each batch
  (`OodReplacement`), or generator samples appended to it (`SyntheticImages`) — one field, so that two
  kinds cannot be asked for together;
- the distillation method: the object whose `loss` the step minimizes, with the interface of
  kd_jax/methods/ (`Method`: init, loss(params, state, MethodInputs, rng)): `LogitKD`, the paper's
  Eq. 1 and its variants, or any method of the benchmark (kd_jax.methods): the logit methods kd,
  dkd, dist, and the feature methods fitnet, at, sp, cc, vid, rkd, pkt, nst, crd, ofd, reviewkd,
  which the step feeds both networks' stage features (CIFAR-zoo models, a teacher ensemble of one)
  and whose own parameters and state (kd_jax.train.TrainState's method fields) it trains and
  carries.

`DistillSpec.__post_init__` refuses the combinations that cannot work (for example cached logits with
images that change every step), so an invalid step cannot be built.
"""

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Union

import jax.numpy as jnp

from kd_jax import losses
from kd_jax.methods import common

TEACHERS_IN_STEP = "in_step"
CACHED_LOGITS = "cached_logits"


@dataclasses.dataclass(frozen=True)
class LogitKD:
  """Logit distillation (Hinton et al.; the paper's Eq. 1 and the original code's variants):

      L = alpha * NLL(labels) + (1 - alpha) * L_KD(p_s^tau, p_t^tau)

  with L_KD one of config.KD_LOSSES (kd_jax/losses.py gives each one's formula) at temperature tau,
  averaged over the batch. `alpha` is a Python number: at 0 the label term is not computed at all, so
  rows without labels (label -1) are fine.
  """
  name: ClassVar[str] = "paper"
  uses_features: ClassVar[bool] = False
  feature_kind: ClassVar[str] = ""

  temperature: float
  alpha: float = 0.0
  kind: str = "forward_kl"

  init = common.no_parameters  # no parameters, no state

  def objective(self, student_logits, teacher_logits, labels, rng, temperature=None):
    """The batch-mean objective; `temperature` overrides tau (synthetic rows have their own)."""
    tau = self.temperature if temperature is None else temperature
    return losses.distillation_loss(student_logits, teacher_logits, labels, alpha=self.alpha,
                                    temperature=tau, kind=self.kind, rng=rng)

  def loss(self, params, state, inputs, rng):
    """kd_jax.methods' interface: (objective, state, no extra metrics)."""
    del params
    return self.objective(inputs.student_logits, inputs.teacher_logits, inputs.labels, rng), state, {}


@dataclasses.dataclass(frozen=True)
class OodReplacement:
  """The last `count` rows of every batch are random images of the run's out-of-distribution set
  (labelled -1: only the teachers label them)."""
  count: int


@dataclasses.dataclass(frozen=True)
class SyntheticImages:
  """`count` generator samples appended after the batch's real images (paper Fig. 4, the original's
  synth_ratio): `sampler(generator_variables, key, count)` gives [0, 255] images, not augmented,
  labelled -1, distilled at `temperature` (the real rows at the method's)."""
  sampler: Callable
  count: int
  temperature: float = 1.0


def synthetic_count(fraction: float, batch_size: int) -> int:
  """Synthetic images per batch: int(fraction * batch_size), the original's rounding down (25 of
  128 at 0.2)."""
  return int(fraction * batch_size)


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """Everything that shapes one compiled distillation step (see the module docstring)."""
  batch_size: int  # rows per step, real + extra
  augment: Callable  # the distillation-data policy (kd_jax/data/augment.py), on the real rows
  method: Any  # LogitKD or a kd_jax.methods method
  teachers: str = TEACHERS_IN_STEP  # or CACHED_LOGITS
  extra: Optional[Union[OodReplacement, SyntheticImages]] = None
  streamed: bool = False
  compute_dtype: Any = jnp.float32
  ensemble_method: str = "auto"  # how the stacked teachers run (kd_jax/ensemble.py)

  def __post_init__(self):
    if self.teachers not in (TEACHERS_IN_STEP, CACHED_LOGITS):
      raise ValueError(f"DistillSpec.teachers={self.teachers!r} is not {TEACHERS_IN_STEP!r} or "
                       f"{CACHED_LOGITS!r}")
    if self.streamed and (self.teachers == CACHED_LOGITS or self.extra is not None):
      raise ValueError("a streamed distillation step runs the teachers in the step, without OOD or "
                       "synthetic images")
    if self.method.uses_features and self.teachers == CACHED_LOGITS:
      raise ValueError(f"method {self.method.name!r} reads the teacher's stage features: the "
                       "teacher runs in the step (no cached logits)")
    if getattr(self.method, "needs_example_indices", False) and (
        self.streamed or isinstance(self.extra, OodReplacement)):
      raise ValueError(f"method {self.method.name!r} needs every row's index in the distillation "
                       "set, which streamed batches and OOD replacement rows do not have")
    if isinstance(self.extra, SyntheticImages) and not isinstance(self.method, LogitKD):
      raise ValueError("synthetic images are distilled by the paper's objective (LogitKD) only")
    if self.teachers == CACHED_LOGITS and self.extra is not None:
      raise ValueError("cached teacher logits need a fixed distillation set; OOD or synthetic images "
                       "are drawn fresh each step")

  @property
  def num_ood(self) -> int:
    return self.extra.count if isinstance(self.extra, OodReplacement) else 0

  @property
  def num_synthetic(self) -> int:
    return self.extra.count if isinstance(self.extra, SyntheticImages) else 0

  @property
  def cached(self) -> bool:
    return self.teachers == CACHED_LOGITS


def mixed_objective(method: LogitKD, student_logits, teacher_logits, labels, rng,
                    synthetic: SyntheticImages):
  """The loss over a batch whose last `synthetic.count` rows are synthetic: the mean over all B rows
  of the method's loss at its temperature (real rows) or `synthetic.temperature` (synthetic rows),
  i.e. (R * mean_real + S * mean_synthetic) / B, as the original's per-example temperatures."""
  real = student_logits.shape[0] - synthetic.count
  parts = ((slice(0, real), None, real),
           (slice(real, None), synthetic.temperature, synthetic.count))
  total = 0.0
  for rows, tau, count in parts:
    total += count * method.objective(student_logits[rows], teacher_logits[rows], labels[rows], rng,
                                      temperature=tau)
  return total / student_logits.shape[0]
