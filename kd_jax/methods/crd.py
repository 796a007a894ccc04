"""CRD: Tian et al. 2020, "Contrastive Representation Distillation" (ICLR), with its memory bank.

Both pooled features are embedded and normalized, v_s = g_s(f_s), v_t = g_t(f_t) (a Linear layer to
128 dims, then L2 normalization; both trained). A memory bank keeps one momentum-averaged embedding
per training example and network, M_s, M_t (N x 128). For a row with dataset index i and K sampled
negative indices j_1..j_K, the contrastive scores against the *other* network's memory are

  h_t(i, j) = exp(M_s[j] . v_t / T) / Z_t,    h_s(i, j) = exp(M_t[j] . v_s / T) / Z_s,

for j in (i, j_1, ..., j_K), the positive first. Z_s, Z_t are set once, at the first step, to N
times the mean of that step's unnormalized scores, and then kept (the reference's normalization of
the NCE estimate). The NCE loss of each side, with noise probability K / N (uniform noise over the N
examples) and eps = 1e-7, is (Eq. 18 of the paper)

  L_NCE(h) = -(1/B) sum_b [log(h_b0 / (h_b0 + K/N + eps)) + sum_k log((K/N) / (h_bk + K/N + eps))],
  L = w_ce * CE(z_s, y) + w_feat * (L_NCE(h_s) + L_NCE(h_t)).

After the scores (which use the memory as it was), the rows of the batch are updated:
M[i] <- normalize(m M[i] + (1 - m) v_i) for both banks, no gradient.

Negatives ('other_class', the reference's mode 'exact'): K indices drawn from `rng` without
replacement among the training examples whose label differs from the row's (a row whose example has
label -1 excludes only itself), as RepDistiller's CIFAR100InstanceSample draws cls_negative; this
needs every example's label, `example_labels` at init. 'uniform': K indices drawn with replacement
from all N examples, as the reference's memory draws them when no contrast indices are given.

Source: HobbitLong/RepDistiller, crd/criterion.py, crd/memory.py, dataset/cifar100.py
(CIFAR100InstanceSample) and megvii-research/mdistiller, mdistiller/distillers/CRD.py (the same);
CIFAR-100 defaults (mdistiller/engine/cfg.py, CFG.CRD; RepDistiller train_student.py): embedding
128, nce_k 16384, temperature 0.07, momentum 0.5, mode 'exact', CE weight 1, feature weight 0.8
(RepDistiller -a 0 -b 0.8). The memory starts uniform in [-s, s], s = 1 / sqrt(128 / 3), as the
reference's.

Features: the pooled (B, D) features that end student_features and teacher_features, and
example_indices: every row's index in the training set (0 <= i < num_examples; rows that are not
training examples, such as OOD or synthetic images, have no memory slot and cannot take part).
Params: {'student_embed': {'kernel' (D_s, 128), 'bias'}, 'teacher_embed': {'kernel' (D_t, 128),
'bias'}}. State: {'student_memory', 'teacher_memory': (N, 128) float32, 'student_normalizer',
'teacher_normalizer': scalars, -1 until set; 'example_labels': (N,) int32 for 'other_class'}.
Teacher ensembles would need the members' pooled features stacked (m, B, D) and a teacher embedding
and memory per member (or of their mean); check_ensemble refuses m > 1 for now.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import KdJaxError
from kd_jax.methods import common
from kd_jax.methods.cc import PairEmbedding
from kd_jax.methods.pkt import pooled_pair

NEGATIVES = ("other_class", "uniform")


def nce_loss(scores, num_examples):
  """L_NCE of (B, 1 + K) normalized scores, the positive in column 0."""
  noise = (scores.shape[1] - 1) / num_examples
  eps = 1e-7
  positive = jnp.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  negative = jnp.log(noise / (scores[:, 1:] + noise + eps))
  return -(jnp.sum(positive) + jnp.sum(negative)) / scores.shape[0]


def updated_memory(memory, indices, embeddings, momentum):
  """M[i] <- normalize(m M[i] + (1 - m) v) for the batch's rows (no gradient)."""
  embeddings = jax.lax.stop_gradient(embeddings).astype(memory.dtype)
  mixed = momentum * memory[indices] + (1.0 - momentum) * embeddings
  return memory.at[indices].set(common.l2_normalize(mixed, axis=-1))


def other_class_negatives(rng, indices, example_labels, count):
  """(B, count) indices drawn without replacement among the examples of another class than each
  row's (or, for a row labelled -1, among all but the row itself): the `count` smallest of uniform
  keys, the excluded examples' keys pushed above every other."""
  num_examples = example_labels.shape[0]
  row_labels = example_labels[indices]
  same_class = (row_labels[:, None] >= 0) & (example_labels[None, :] == row_labels[:, None])
  excluded = same_class | (jnp.arange(num_examples)[None, :] == indices[:, None])
  keys = jax.random.uniform(rng, (indices.shape[0], num_examples))
  keys = jnp.where(excluded, 2.0, keys)
  return jnp.argsort(keys, axis=1)[:, :count].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class CRD:
  """Contrastive representation distillation with its memory bank (module docstring)."""
  name: ClassVar[str] = "crd"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"
  needs_example_indices: ClassVar[bool] = True  # its memory bank has a row per training example

  num_examples: int = 0
  embed_dim: int = 128
  nce_k: int = 16384
  nce_temperature: float = 0.07
  nce_momentum: float = 0.5
  negatives: str = "other_class"
  ce_weight: float = 1.0
  feat_weight: float = 0.8

  def __post_init__(self):
    if self.num_examples < 1:
      raise KdJaxError("distill method 'crd' keeps a memory slot per training example: set "
                       f"num_examples to the training set's size (got {self.num_examples}).")
    if self.negatives not in NEGATIVES:
      raise KdJaxError(f"distill method 'crd': negatives={self.negatives!r} is not one of "
                       f"{', '.join(NEGATIVES)}.")
    if self.nce_k < 1:
      raise KdJaxError(f"distill method 'crd': nce_k={self.nce_k} must be at least 1.")

  from_config = classmethod(common.method_from_config)

  def _example_labels(self, example_labels):
    if example_labels is None:
      raise KdJaxError("distill method 'crd' with negatives='other_class' draws negatives from "
                       "the other classes and needs example_labels (the training set's labels) "
                       "at init; or use negatives='uniform'.")
    example_labels = np.asarray(example_labels)
    if example_labels.shape != (self.num_examples,):
      raise KdJaxError(f"distill method 'crd': example_labels has shape {example_labels.shape}, "
                       f"expected ({self.num_examples},), one label per training example.")
    known = example_labels[example_labels >= 0]
    largest_class = max(np.bincount(known).max() if known.size else 0, 1)
    if self.nce_k > self.num_examples - largest_class:
      raise KdJaxError(f"distill method 'crd': nce_k={self.nce_k} negatives cannot be drawn "
                       f"without replacement from the {self.num_examples - largest_class} "
                       "examples outside the largest class; lower nce_k.")
    return jnp.asarray(example_labels, jnp.int32)

  def init(self, rng, inputs, *, example_labels=None):
    """Params of the two embeddings and the memory bank; `example_labels` (N,) for 'other_class'."""
    student, teacher = pooled_pair(self.name, inputs)
    embed_rng, student_rng, teacher_rng = jax.random.split(rng, 3)
    params = common.init_params(PairEmbedding(self.embed_dim), embed_rng, student, teacher)
    bound = 1.0 / np.sqrt(self.embed_dim / 3)
    shape = (self.num_examples, self.embed_dim)
    state = {
        "student_memory": jax.random.uniform(student_rng, shape, jnp.float32, -bound, bound),
        "teacher_memory": jax.random.uniform(teacher_rng, shape, jnp.float32, -bound, bound),
        "student_normalizer": jnp.float32(-1.0),
        "teacher_normalizer": jnp.float32(-1.0),
    }
    if self.negatives == "other_class":
      state["example_labels"] = self._example_labels(example_labels)
    return params, state

  def contrast_indices(self, rng, indices, state):
    """(B, 1 + K): each row's own index, then its K negatives."""
    if self.negatives == "other_class":
      negatives = other_class_negatives(rng, indices, state["example_labels"], self.nce_k)
    else:
      negatives = jax.random.randint(rng, (indices.shape[0], self.nce_k), 0, self.num_examples)
    return jnp.concatenate([indices[:, None], negatives.astype(indices.dtype)], axis=1)

  def loss(self, params, state, inputs, rng):
    if inputs.example_indices is None:
      raise KdJaxError("distill method 'crd' needs example_indices, each row's index in the "
                       "training set.")
    indices = jnp.asarray(inputs.example_indices, jnp.int32)
    student, teacher = pooled_pair(self.name, inputs)
    student, teacher = PairEmbedding(self.embed_dim).apply({"params": params}, student, teacher)
    student, teacher = common.l2_normalize(student), common.l2_normalize(teacher)
    contrast = self.contrast_indices(rng, indices, state)

    def scores(memory, embeddings, normalizer):
      # Every example's dot product, then the contrast columns: the same numbers as gathering the
      # (B, 1 + K, D) memory rows first, without materializing them.
      memory = jax.lax.stop_gradient(memory).astype(embeddings.dtype)
      dots = jnp.take_along_axis(embeddings @ memory.T, contrast, axis=1)
      unnormalized = jnp.exp(dots / self.nce_temperature)
      first = jax.lax.stop_gradient(jnp.mean(unnormalized) * self.num_examples)
      normalizer = jnp.where(normalizer < 0, first.astype(normalizer.dtype), normalizer)
      return unnormalized / normalizer, normalizer

    student_scores, student_normalizer = scores(state["teacher_memory"], student,
                                                state["student_normalizer"])
    teacher_scores, teacher_normalizer = scores(state["student_memory"], teacher,
                                                state["teacher_normalizer"])
    nce_student = nce_loss(student_scores, self.num_examples)
    nce_teacher = nce_loss(teacher_scores, self.num_examples)
    new_state = dict(state)
    new_state.update(
        student_memory=updated_memory(state["student_memory"], indices, student,
                                      self.nce_momentum),
        teacher_memory=updated_memory(state["teacher_memory"], indices, teacher,
                                      self.nce_momentum),
        student_normalizer=student_normalizer, teacher_normalizer=teacher_normalizer)
    feat = self.feat_weight * (nce_student + nce_teacher)
    return common.with_cross_entropy(self.ce_weight, inputs, feat, new_state,
                                     nce_student=nce_student, nce_teacher=nce_teacher)
