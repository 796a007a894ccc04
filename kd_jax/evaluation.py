"""Evaluation after training: what the student learned (generalization) and how much of it is the teacher's.

- `Evaluator.teacher_logits` / `student_logits`: one compiled, chunked pass of a model over a whole split
  (clean images, eval-mode BatchNorm), with progress lines on long passes. The run computes each model's
  logits on each split once and passes them around: the teachers' logits on the distillation set also
  serve as cached distillation targets (kd_jax/study/memory.py), and the independent baseline reuses the
  ensemble's test logits.
- `split_metrics`: accuracy, NLL and ECE for each teacher, the ensemble and the student, and agreement
  and KL(ensemble || student), from those logits; per-example values in float32 on the device, dataset
  means in float64 on the host (kd_jax/metrics.py).
- `augmented_fidelity`: fidelity on batches of the distillation stream itself (the policy the student was
  trained on), the quantity the original code approximated with running averages.
- `stage_cka`: linear CKA between a teacher's and the student's activations at the end of each stage.
"""

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import ensemble, losses, metrics, parallel, progress, runtime
from kd_jax.data import augment as augment_lib

# A pass over a split that takes longer than this prints progress lines this often.


def eval_batch_size(requested: int, smallest_split: int, mesh) -> int:
  devices = mesh.devices.size
  return max(min(requested, smallest_split) // devices * devices, devices)


def make_predict_fn(apply_fn: Callable, *, batch_size: int, mesh, compute_dtype=jnp.float32):
  """Returns predict(variables, images, mean, std, label='') -> logits for every image.

  `apply_fn(variables, x)` gives (..., B, C) logits for a normalized batch; the images stay on device
  and are cut into fixed-size chunks inside one compiled function (the last chunk overlaps the one
  before it instead of being padded, so there is a single compilation). With a `label`, a pass that
  runs longer than progress.PROGRESS_SECONDS prints how far it got.
  """

  # Replicated logits: the host reads them whole in every process of a multi-process run.
  @functools.partial(jax.jit, out_shardings=parallel.replicated_sharding(mesh))
  def predict_chunk(variables, images, start, mean, std):
    x = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
    x = parallel.shard_batch(augment_lib.normalize(x, mean, std, compute_dtype), mesh)
    return apply_fn(variables, x).astype(jnp.float32)

  def predict(variables, images, mean, std, label: str = ""):
    num_images = images.shape[0]
    if num_images < batch_size:
      raise ValueError(f"{num_images} images are fewer than the evaluation batch size {batch_size}")
    chunks = []
    started = last_report = time.time()
    for start in range(0, num_images, batch_size):
      runtime.raise_if_stopped()  # a signal Python could not raise where it landed (runtime.py)
      clamped = min(start, num_images - batch_size)
      logits = predict_chunk(variables, images, clamped, mean, std)
      chunks.append(logits[..., start - clamped:, :])
      if label and time.time() - last_report > progress.PROGRESS_SECONDS:
        jax.block_until_ready(logits)
        last_report = time.time()
        done = min(start + batch_size, num_images)
        rate = done / (last_report - started)
        print(f"[evaluation] {label}: {done}/{num_images} images, {rate:.0f} img/s, "
              f"ETA {(num_images - done) / rate:.0f}s", flush=True)
    return jnp.concatenate(chunks, axis=-2)

  return predict


def per_example_by_role(member_logits, student_logits, labels) -> dict:
  """metrics.per_example of every member ((m, N) arrays), the ensemble and the student (whose fidelity
  is measured against the ensemble), on the device."""
  ensemble_logits = losses.ensemble_log_probs(member_logits)
  return {
      "teachers": metrics.per_example(member_logits, labels),
      "ensemble": metrics.per_example(ensemble_logits, labels),
      "student": metrics.per_example(student_logits, labels, teacher_logits=ensemble_logits),
  }


def summarize_by_role(values) -> dict:
  """per_example_by_role's values (on the host, all of a split's examples) -> {'teachers': [{..}],
  'ensemble': {..}, 'student': {..}} of float values (float64 means)."""
  num_members = next(iter(values["teachers"].values())).shape[0]
  return {
      "teachers": [metrics.summarize({k: v[i] for k, v in values["teachers"].items()})
                   for i in range(num_members)],
      "ensemble": metrics.summarize(values["ensemble"]),
      "student": metrics.summarize(values["student"]),
  }


_per_example_by_role_jit = jax.jit(per_example_by_role)


def split_metrics(member_logits, student_logits, labels) -> dict:
  """summarize_by_role of the (m, N, C) member logits and (N, C) student logits of one split."""
  return summarize_by_role(jax.device_get(
      _per_example_by_role_jit(member_logits, student_logits, labels)))


def add_split(results: dict, split: str, split_results: dict) -> None:
  """Adds one split's summarize_by_role results to a run's results, as '<split>_<metric>' keys."""
  for entry, values in zip(results["teachers"], split_results["teachers"]):
    entry.update({f"{split}_{k}": v for k, v in values.items()})
  for role in ("ensemble", "student"):
    results[role].update({f"{split}_{k}": v for k, v in split_results[role].items()})


class Evaluator:
  """Compiled predictions of a teacher ensemble and a student, shared by all evaluations of a run."""

  def __init__(self, teacher, student, *, batch_size: int, mesh, compute_dtype, method: str):
    self.teacher, self.student, self.mesh = teacher, student, mesh
    self.compute_dtype, self.method, self.batch_size = compute_dtype, method, batch_size
    self._predict_teachers = make_predict_fn(
        self._member_logits, batch_size=batch_size, mesh=mesh, compute_dtype=compute_dtype)
    self._predict_student = make_predict_fn(
        lambda v, x: student.apply(v, x, train=False), batch_size=batch_size, mesh=mesh,
        compute_dtype=compute_dtype)

  def _member_logits(self, stacked_variables, x):
    """(m, B, C): each member's logits (eval-mode BatchNorm)."""
    return ensemble.member_logits(self.teacher, stacked_variables, x, self.method)

  def teacher_logits(self, teacher_variables, images, mean, std, label: str = ""):
    """(m, N, C) float32 logits of every member on every image."""
    return self._predict_teachers(teacher_variables, images, mean, std, label)

  def student_logits(self, student_variables, images, mean, std, label: str = ""):
    """(N, C) float32 logits of the student on every image."""
    return self._predict_student(student_variables, images, mean, std, label)

  def augmented_fidelity(self, teacher_variables, student_variables, data, policy, rng,
                         num_batches: int) -> dict:
    """Agreement and KL on `num_batches` batches drawn and augmented as in distillation."""
    batch_size = self.batch_size

    @functools.partial(jax.jit, out_shardings=parallel.replicated_sharding(self.mesh))
    def batch_fidelity(key):
      sample_key, augment_key = jax.random.split(key)
      order = jax.random.permutation(sample_key, data.train_images.shape[0])[:batch_size]
      x = augment_lib.normalize(policy(augment_key, data.train_images[order]), data.mean, data.std,
                                self.compute_dtype)
      x = parallel.shard_batch(x, self.mesh)
      teacher_logits = losses.ensemble_log_probs(self._member_logits(teacher_variables, x))
      student_logits = self.student.apply(student_variables, x, train=False)
      values = metrics.fidelity_per_example(teacher_logits, student_logits)
      return {"agreement": values["agree"], "kl": values["kl"]}

    per_batch = jax.device_get([batch_fidelity(jax.random.fold_in(rng, i))
                                for i in range(num_batches)])
    return {k: float(np.mean(np.concatenate([b[k] for b in per_batch]).astype(np.float64)))
            for k in ("agreement", "kl")}

  def stage_cka(self, teacher_variables, student_variables, images, mean, std) -> dict:
    """Linear CKA per stage between teacher member 0 and the student, on `images` (kept small)."""

    def activations(model, variables, x):
      _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
          variables, x)
      return {name: value[0] for name, value in state["intermediates"].items()}

    x = augment_lib.normalize(images, mean, std, self.compute_dtype)
    first_teacher = jax.tree.map(lambda leaf: leaf[0], teacher_variables)
    teacher_stages = activations(self.teacher, first_teacher, x)
    student_stages = activations(self.student, student_variables, x)
    shared = sorted(teacher_stages.keys() & student_stages.keys())
    return {f"cka_{name}": float(metrics.linear_cka(teacher_stages[name].astype(jnp.float32),
                                                     student_stages[name].astype(jnp.float32)))
            for name in shared}
