"""Evaluation after training: what the student learned (generalization) and how much of it is the teacher's.

- `clean_metrics`: every model on a dataset without augmentation, eval-mode BatchNorm: accuracy, NLL and
  ECE for each teacher, the ensemble and the student; agreement and KL(ensemble || student).
- `augmented_fidelity`: the same fidelity on batches of the distillation stream itself (the policy the
  student was trained on), the quantity the original code approximated with running averages.
- `stage_cka`: linear CKA between a teacher's and the student's activations at the end of each stage.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import ensemble, losses, metrics, parallel, train
from kd_jax.data import augment as augment_lib


@jax.jit
def _split_metrics(member_logits, student_logits, labels):
  ensemble_logits = losses.ensemble_log_probs(member_logits)
  return {
      "teachers": jax.vmap(lambda z: metrics.classification_metrics(z, labels))(member_logits),
      "ensemble": metrics.classification_metrics(ensemble_logits, labels),
      "student": {**metrics.classification_metrics(student_logits, labels),
                  **metrics.fidelity_metrics(ensemble_logits, student_logits)},
  }


def eval_batch_size(requested: int, smallest_split: int, mesh) -> int:
  devices = mesh.devices.size
  return max(min(requested, smallest_split) // devices * devices, devices)


class Evaluator:
  """Compiled predictions of a teacher ensemble and a student, shared by all evaluations of a run."""

  def __init__(self, teacher, student, *, batch_size: int, mesh, compute_dtype, method: str):
    self.teacher, self.student, self.mesh = teacher, student, mesh
    self.compute_dtype, self.method, self.batch_size = compute_dtype, method, batch_size
    self.predict_teachers = train.make_predict_fn(
        self._teacher_logits, batch_size=batch_size, mesh=mesh, compute_dtype=compute_dtype)
    self.predict_student = train.make_predict_fn(
        lambda v, x: student.apply(v, x, train=False), batch_size=batch_size, mesh=mesh,
        compute_dtype=compute_dtype)

  def _teacher_logits(self, stacked_variables, x):
    return ensemble.map_members(lambda v: self.teacher.apply(v, x, train=False), stacked_variables,
                                method=self.method)

  def clean_metrics(self, teacher_variables, student_variables, images, labels, mean, std) -> dict:
    """{'teachers': [{..}], 'ensemble': {..}, 'student': {..}} with float values."""
    values = jax.device_get(_split_metrics(
        self.predict_teachers(teacher_variables, images, mean, std),
        self.predict_student(student_variables, images, mean, std), labels))
    num_members = len(next(iter(values["teachers"].values())))
    return {
        "teachers": [{k: float(v[i]) for k, v in values["teachers"].items()}
                     for i in range(num_members)],
        "ensemble": {k: float(v) for k, v in values["ensemble"].items()},
        "student": {k: float(v) for k, v in values["student"].items()},
    }

  def augmented_fidelity(self, teacher_variables, student_variables, data: train.DeviceData,
                         policy, rng, num_batches: int) -> dict:
    """Agreement and KL on `num_batches` batches drawn and augmented as in distillation."""
    batch_size = self.batch_size

    @jax.jit
    def batch_fidelity(key):
      sample_key, augment_key = jax.random.split(key)
      order = jax.random.permutation(sample_key, data.train_images.shape[0])[:batch_size]
      x = augment_lib.normalize(policy(augment_key, data.train_images[order]), data.mean, data.std,
                                self.compute_dtype)
      x = parallel.shard_batch(x, self.mesh)
      teacher_logits = losses.ensemble_log_probs(self._teacher_logits(teacher_variables, x))
      student_logits = self.student.apply(student_variables, x, train=False)
      return metrics.fidelity_metrics(teacher_logits, student_logits)

    per_batch = [batch_fidelity(jax.random.fold_in(rng, i)) for i in range(num_batches)]
    return {k: float(np.mean([jax.device_get(b[k]) for b in per_batch])) for k in per_batch[0]}

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
