"""What every distillation method shares: its inputs, the labelled cross-entropy, warm-ups, feature
selection, and the small numerical pieces (normalization, pooling, resizing, batch-statistics
BatchNorm) that the reference PyTorch code takes from torch.nn.functional.

Every function computes in at least float32 (bf16 inputs are promoted; float64 stays float64, so the
tests can check gradients in double precision) and is a pure jnp function that jits.

Feature conventions (what the fused step passes in `MethodInputs`):
  *_features: a tuple with one (B, H, W, C) map per stage of the network, in order, each the
    stage's output after its last ReLU (the models' sown 'stage1', 'stage2', ...; no stem output),
    optionally followed by the pooled feature (B, D) that enters the classifier.
  *_preact_features: the same stage maps before that last ReLU (no pooled feature).
"""

import dataclasses
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import KdJaxError


@flax.struct.dataclass
class MethodInputs:
  """One step's inputs of a method's loss (a pytree: it crosses jit boundaries as it is).

  student_logits, teacher_logits: (B, C); for a teacher ensemble, the log of the members' mean
    probabilities (kd_jax.losses.ensemble_log_probs). The teacher's entries receive no gradient.
  labels: (B,) int32 ground truth; -1 marks an unlabelled row (OOD or synthetic image), which every
    term that needs a label leaves out.
  student_features, teacher_features, student_preact_features, teacher_preact_features: tuples as
    the module docstring says; empty for methods that use no features.
  example_indices: (B,) int32 indices of the rows in the training set (CRD's memory), else None.
  step: scalar int32, the number of updates before this one (0 at the first step), for warm-ups.
  """
  student_logits: Any
  teacher_logits: Any
  labels: Any
  student_features: tuple = ()
  teacher_features: tuple = ()
  student_preact_features: tuple = ()
  teacher_preact_features: tuple = ()
  example_indices: Optional[Any] = None
  step: Any = 0


def network_features(stage_features) -> dict:
  """MethodInputs' feature fields of one network, from a CIFAR-zoo model's StageFeatures
  (kd_jax/models/cifar_layers.py; `model.apply(..., features=True)`): the stage maps after the stem
  then the pooled feature, and the pre-ReLU stage maps after the stem. Keys 'features' and
  'preact_features'."""
  return {"features": (*stage_features.stages[1:], stage_features.pooled),
          "preact_features": tuple(stage_features.preact_stages[1:])}


def as_float(x):
  """x as an array of at least float32 precision (bf16 -> float32; float64 stays)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def teacher_value(x):
  """A teacher quantity as a constant of the loss: promoted like `as_float`, no gradient."""
  return jax.lax.stop_gradient(as_float(x))


def log_softmax(logits, temperature=1.0):
  return jax.nn.log_softmax(as_float(logits) / temperature, axis=-1)


def labelled_cross_entropy(logits, labels):
  """Mean of -log softmax(logits)[label] over the rows with a label (label >= 0); 0 if none has.

  The reference code has a label for every row; unlabelled rows (-1) simply leave the mean.
  """
  labelled = labels >= 0
  log_probs = log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
  count = jnp.maximum(jnp.sum(labelled), 1)
  return -jnp.sum(jnp.where(labelled, picked, 0.0)) / count


def with_cross_entropy(ce_weight, inputs, distill, state, **metrics):
  """A method's loss(...) result: (ce + distill, state, {'ce', 'distill', **metrics}), with the
  weighted labelled cross-entropy ce = ce_weight * CE(student_logits, labels)."""
  ce = ce_weight * labelled_cross_entropy(inputs.student_logits, inputs.labels)
  return ce + distill, state, {"ce": ce, "distill": distill, **metrics}


def standardize_logits(logits):
  """Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge Distillation",
  CVPR): the z-score of each row, taken before the temperature.

  Z(z) = (z - mean(z)) / (std(z) + 1e-7), with the unbiased standard deviation over the C classes
  (torch.Tensor.std, as `normalize` in sunshangquan/logit-standardization-KD,
  mdistiller/distillers/KD.py and DKD.py, computes it). The softmax of Z(z) / tau depends only on
  the shape of the logits, not on their shift or scale. (The norm of `vector_norm` keeps the gradient
  finite for a constant row, such as a zero-initialized head's.)
  """
  centered = as_float(logits) - jnp.mean(as_float(logits), axis=-1, keepdims=True)
  std = vector_norm(centered, axis=-1) / np.sqrt(centered.shape[-1] - 1)
  return centered / (1e-7 + std)


def epoch_warmup(step, steps_per_epoch, warmup_epochs):
  """min(epoch / warmup_epochs, 1) with the 1-based epoch of `step`, as mdistiller's trainer counts.

  epoch = step // steps_per_epoch + 1, so the first epoch has weight 1 / warmup_epochs and epochs
  warmup_epochs and later weight 1. warmup_epochs = 0 turns the warm-up off.
  """
  if warmup_epochs <= 0:
    return jnp.float32(1.0)
  epoch = jnp.asarray(step) // steps_per_epoch + 1
  return jnp.minimum(epoch / warmup_epochs, 1.0).astype(jnp.float32)


def check_steps_per_epoch(method):
  if method.warmup_epochs > 0 and method.steps_per_epoch < 1:
    raise KdJaxError(f"distill method {method.name!r} warms its loss up over "
                     f"{method.warmup_epochs} epochs and needs steps_per_epoch >= 1 (got "
                     f"{method.steps_per_epoch}); set it, or warmup_epochs=0.")


def stage_maps(features, method_name, which):
  """The (B, H, W, C) stage maps of a feature tuple (without its trailing pooled feature)."""
  maps = tuple(f for f in features if jnp.ndim(f) == 4)
  if not maps:
    raise KdJaxError(f"distill method {method_name!r} needs {which}: one (B, H, W, C) map per "
                     "stage, but the step gave none.")
  return maps


def pooled_feature(features, method_name, which):
  """The pooled (B, D) feature that ends a feature tuple."""
  if not features or jnp.ndim(features[-1]) != 2:
    raise KdJaxError(f"distill method {method_name!r} needs the pooled (B, D) feature as the last "
                     f"element of {which}.")
  return features[-1]


def vector_norm(x, axis=-1, keepdims=True):
  """Euclidean norm whose gradient at a zero vector is 0 instead of NaN."""
  squares = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def l2_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps) along `axis`."""
  return x / jnp.maximum(vector_norm(x, axis), eps)


def _adaptive_pool_matrix(in_size, out_size):
  # PyTorch's adaptive average pooling: output i averages inputs floor(i * n / m) to
  # ceil((i + 1) * n / m) - 1 (windows overlap when m does not divide n).
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x, size):
  """torch.nn.functional.adaptive_avg_pool2d of an NHWC map to size = (height, width)."""
  height, width = size
  if x.shape[1:3] == (height, width):
    return x
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], height), x.dtype)
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], width), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def pool_to_smaller(student_map, teacher_map):
  """Average-pools the map with more pixels per side to the other's size (AT, NST and VID)."""
  student_size, teacher_size = student_map.shape[1:3], teacher_map.shape[1:3]
  if student_size[0] > teacher_size[0]:
    student_map = adaptive_avg_pool(student_map, teacher_size)
  elif student_size[0] < teacher_size[0]:
    teacher_map = adaptive_avg_pool(teacher_map, student_size)
  return student_map, teacher_map


def nearest_resize(x, size):
  """F.interpolate(mode='nearest') of an NHWC map to `size`: source index floor(i * n / m)."""
  height, width = size
  if x.shape[1:3] == (height, width):
    return x
  rows = (np.arange(height) * x.shape[1]) // height
  cols = (np.arange(width) * x.shape[2]) // width
  return x[:, rows][:, :, cols]


def torch_default_init(fan_in):
  """PyTorch's default init of a Conv2d / Linear weight or bias: U(+-1 / sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchStatNorm(nn.Module):
  """BatchNorm as a PyTorch BatchNorm2d / 1d computes it in training mode: normalized by the batch's
  own mean and (biased) variance over every axis but the last, then scaled and shifted.

  No running statistics: a method's connectors only run in training, where those are never read.
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    variance = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias


def init_params(module, rng, *args):
  """module's initial 'params' for example `args`, initialized under jit (one compilation instead of
  one per operation of an eager init)."""
  return jax.jit(module.init)(rng, *args)["params"]


def no_parameters(method, rng, inputs):
  """`init` of a method with no parameters and no state (the logit methods): ({}, {})."""
  del method, rng, inputs
  return {}, {}


def method_from_config(cls, cfg):
  """cls(**cfg) for a frozen method dataclass, without the 'name' key; unknown keys are an error."""
  values = dict(cfg)
  values.pop("name", None)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise KdJaxError(f"distill method {cls.name!r} has no option {', '.join(unknown)}; its "
                     f"options: {', '.join(sorted(fields))}.")
  return cls(**values)
