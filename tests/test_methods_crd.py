"""CRD (kd_jax.methods.crd) against a NumPy transcription: NCE loss and gradient, the memory update,
the normalizing constants, and the negatives it draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import methods_numpy as npm
from kd_jax.errors import KdJaxError
from kd_jax.methods import CRD, MethodInputs

EXAMPLES, CLASSES, NEGATIVES = 30, 3, 6
EXAMPLE_LABELS = np.arange(EXAMPLES) % CLASSES


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _inputs(seed, batch=5, dims=(3, 5)):
  rng = np.random.default_rng(seed)
  indices = rng.choice(EXAMPLES, batch, replace=False)
  labels = EXAMPLE_LABELS[indices].copy()
  labels[0] = -1  # an unlabelled row still has its memory slot; it only leaves CE
  return MethodInputs(
      student_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      teacher_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      labels=jnp.asarray(labels, jnp.int32),
      student_features=(jnp.asarray(rng.normal(size=(batch, dims[0]))),),
      teacher_features=(jnp.asarray(rng.normal(size=(batch, dims[1]))),),
      example_indices=jnp.asarray(indices, jnp.int32))


def _method(**overrides):
  return CRD(**{"num_examples": EXAMPLES, "nce_k": NEGATIVES, "embed_dim": 4,
                "nce_temperature": 0.5, **overrides})


def _np_embed(feature, params):
  e = feature @ params["kernel"] + params["bias"]
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def _np_nce(scores):
  noise, eps = (scores.shape[1] - 1) / EXAMPLES, 1e-7
  positive = np.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  negative = np.log(noise / (scores[:, 1:] + noise + eps))
  return -(positive.sum() + negative.sum()) / len(scores)


def _np_crd(params, student, teacher, state, contrast, temperature, normalizers=None):
  """(NCE of the student side, NCE of the teacher side, normalizers) as the reference computes."""
  e_s = _np_embed(student, params["student_embed"])
  e_t = _np_embed(teacher, params["teacher_embed"])
  raw_s = np.exp(np.einsum("bkd,bd->bk", state["teacher_memory"][contrast], e_s) / temperature)
  raw_t = np.exp(np.einsum("bkd,bd->bk", state["student_memory"][contrast], e_t) / temperature)
  if normalizers is None:  # the first step sets them from its own scores
    normalizers = (raw_s.mean() * EXAMPLES, raw_t.mean() * EXAMPLES)
  return _np_nce(raw_s / normalizers[0]), _np_nce(raw_t / normalizers[1]), normalizers


@pytest.mark.parametrize("negatives", ["other_class", "uniform"])
@pytest.mark.parametrize("dims", [(3, 5), (6, 2)])
def test_crd_loss_and_gradient_match_numpy(negatives, dims):
  method = _method(negatives=negatives, ce_weight=0.5, feat_weight=0.8)
  inputs = _inputs(0, dims=dims)
  params, state = method.init(jax.random.key(0), inputs, example_labels=EXAMPLE_LABELS)
  params, state = npm.to_float64(params), npm.to_float64(state)
  rng = jax.random.key(3)
  contrast = np.asarray(method.contrast_indices(rng, inputs.example_indices, state))
  np_state, labels = npm.to_numpy(state), np.asarray(inputs.labels)
  teacher = np.asarray(inputs.teacher_features[0])

  # First step: the normalizers come from this step's scores, as constants.
  loss, new_state, metrics = jax.jit(method.loss)(params, state, inputs, rng)
  nce_s, nce_t, normalizers = _np_crd(npm.to_numpy(params), np.asarray(inputs.student_features[0]),
                                      teacher, np_state, contrast, 0.5)
  np.testing.assert_allclose(metrics["nce_student"], nce_s, rtol=1e-9)
  np.testing.assert_allclose(metrics["nce_teacher"], nce_t, rtol=1e-9)
  np.testing.assert_allclose(loss, 0.5 * npm.labelled_ce(np.asarray(inputs.student_logits), labels)
                             + 0.8 * (nce_s + nce_t), rtol=1e-9)
  np.testing.assert_allclose([new_state["student_normalizer"], new_state["teacher_normalizer"]],
                             normalizers, rtol=1e-9)

  # Later steps: fixed normalizers; the gradient w.r.t. params, student feature and logits.
  state = {**state, "student_normalizer": jnp.float64(normalizers[0] * 1.3),
           "teacher_normalizer": jnp.float64(normalizers[1] * 0.7)}
  fixed = (normalizers[0] * 1.3, normalizers[1] * 0.7)

  def jax_loss(p):
    moved = inputs.replace(student_logits=p["logits"], student_features=(p["feature"],))
    loss, new_state, metrics = method.loss(p["params"], state, moved, rng)
    return loss, new_state

  def numpy_loss(p):
    p = npm.to_numpy(p)
    nce_s, nce_t, _ = _np_crd(p["params"], p["feature"], teacher, np_state, contrast, 0.5, fixed)
    return 0.5 * npm.labelled_ce(p["logits"], labels) + 0.8 * (nce_s + nce_t)

  point = {"params": params, "logits": inputs.student_logits, "feature": inputs.student_features[0]}
  kept = npm.check_value_and_gradient(jax_loss, numpy_loss, point)
  np.testing.assert_allclose([kept["student_normalizer"], kept["teacher_normalizer"]], fixed)


def test_crd_memory_update_matches_numpy():
  method = _method(nce_momentum=0.3)
  inputs = _inputs(1)
  params, state = method.init(jax.random.key(0), inputs, example_labels=EXAMPLE_LABELS)
  params, state = npm.to_float64(params), npm.to_float64(state)
  _, new_state, _ = jax.jit(method.loss)(params, state, inputs, jax.random.key(2))
  np_params, old = npm.to_numpy(params), npm.to_numpy(state)
  indices = np.asarray(inputs.example_indices)
  embeddings = {"student_memory": _np_embed(np.asarray(inputs.student_features[0]),
                                            np_params["student_embed"]),
                "teacher_memory": _np_embed(np.asarray(inputs.teacher_features[0]),
                                            np_params["teacher_embed"])}
  for bank, embedding in embeddings.items():
    expected = old[bank].copy()
    for row, i in enumerate(indices):
      mixed = 0.3 * old[bank][i] + 0.7 * embedding[row]
      expected[i] = mixed / np.linalg.norm(mixed)
    np.testing.assert_allclose(new_state[bank], expected, rtol=1e-12, atol=1e-15)
  np.testing.assert_array_equal(new_state["example_labels"], EXAMPLE_LABELS)


def test_crd_memory_starts_uniform_in_the_references_range():
  method = _method(embed_dim=12)
  _, state = method.init(jax.random.key(0), _inputs(2), example_labels=EXAMPLE_LABELS)
  bound = 1 / np.sqrt(12 / 3)
  for bank in ("student_memory", "teacher_memory"):
    assert state[bank].shape == (EXAMPLES, 12) and state[bank].dtype == jnp.float32
    assert np.abs(state[bank]).max() <= bound and np.abs(state[bank]).max() > 0.8 * bound
  assert state["student_normalizer"] == -1 and state["teacher_normalizer"] == -1


def test_crd_other_class_negatives_are_distinct_examples_of_other_classes():
  method = _method(nce_k=19)  # all 20 examples of the two other classes but one
  labels = EXAMPLE_LABELS.copy()
  labels[7] = -1  # an example without a label excludes only itself
  _, state = method.init(jax.random.key(0), _inputs(3), example_labels=labels)
  indices = jnp.asarray([0, 4, 7, 29], jnp.int32)
  for seed in range(3):
    contrast = np.asarray(method.contrast_indices(jax.random.key(seed), indices, state))
    np.testing.assert_array_equal(contrast[:, 0], indices)
    for row, i in enumerate(np.asarray(indices)):
      negatives = contrast[row, 1:]
      assert len(set(negatives)) == 19 and i not in negatives
      if labels[i] >= 0:
        assert not np.any(labels[negatives] == labels[i])


def test_crd_uniform_negatives_cover_the_training_set():
  method = _method(negatives="uniform", nce_k=500)
  _, state = method.init(jax.random.key(0), _inputs(4))
  assert "example_labels" not in state
  contrast = np.asarray(method.contrast_indices(jax.random.key(1), jnp.arange(3), state))
  assert contrast.shape == (3, 501)
  assert contrast[:, 1:].min() == 0 and contrast[:, 1:].max() == EXAMPLES - 1


def test_crd_rejects_what_it_cannot_do():
  with pytest.raises(KdJaxError, match="num_examples"):
    CRD()
  with pytest.raises(KdJaxError, match="example_labels"):
    _method().init(jax.random.key(0), _inputs(5))
  with pytest.raises(KdJaxError, match="lower nce_k"):
    _method(nce_k=21).init(jax.random.key(0), _inputs(5), example_labels=EXAMPLE_LABELS)
  with pytest.raises(KdJaxError, match="example_indices"):
    method = _method(negatives="uniform")
    params, state = method.init(jax.random.key(0), _inputs(5))
    method.loss(params, state, _inputs(5).replace(example_indices=None), jax.random.key(1))
