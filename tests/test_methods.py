"""The shared interface of kd_jax.methods: the registry, check_ensemble, and for every method under
jit with bf16 inputs: a float32 loss that is 'ce' + 'distill', no gradient into the teacher."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import methods_numpy as npm
from kd_jax.errors import KdJaxError
from kd_jax.methods import (CRD, DKD, KD, METHODS, MethodInputs, ReviewKD, check_ensemble, common,
                            make_method)

BATCH, CLASSES, EXAMPLES = 6, 5, 40
STUDENT_STAGES, TEACHER_STAGES = ((4, 8), (8, 4)), ((6, 8), (12, 4))
# The options a method cannot do without (sizes of the run it belongs to).
REQUIRED = {"dkd": {"steps_per_epoch": 3}, "reviewkd": {"steps_per_epoch": 3},
            "crd": {"num_examples": EXAMPLES, "nce_k": 8}}


def _inputs(dtype=jnp.bfloat16):
  rng = np.random.default_rng(0)

  def array(*shape):
    return jnp.asarray(rng.normal(size=shape), dtype)

  def stages(layout):
    return tuple(array(BATCH, size, size, channels) for channels, size in layout)

  student_preact, teacher_preact = stages(STUDENT_STAGES), stages(TEACHER_STAGES)
  labels = rng.integers(0, CLASSES, BATCH)
  labels[0] = -1
  return MethodInputs(
      student_logits=array(BATCH, CLASSES), teacher_logits=array(BATCH, CLASSES),
      labels=jnp.asarray(labels, jnp.int32),
      student_features=tuple(jax.nn.relu(f) for f in student_preact) + (array(BATCH, 8),),
      teacher_features=tuple(jax.nn.relu(f) for f in teacher_preact) + (array(BATCH, 12),),
      student_preact_features=student_preact, teacher_preact_features=teacher_preact,
      example_indices=jnp.arange(BATCH, dtype=jnp.int32) * 5, step=jnp.int32(4))


def _init_extras(name):
  if name == "ofd":
    return {"teacher_bn_mean": [np.zeros(c) for c, _ in TEACHER_STAGES],
            "teacher_bn_std": [np.ones(c) for c, _ in TEACHER_STAGES]}
  if name == "crd":
    return {"example_labels": np.arange(EXAMPLES) % CLASSES}
  return {}


def test_registry_names_every_method():
  assert set(METHODS) == {"kd", "dkd", "dist", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt",
                          "nst", "crd", "ofd", "reviewkd"}
  for name in METHODS:
    method = make_method({"name": name, **REQUIRED.get(name, {})})
    assert method.name == name
    assert method.uses_features == (method.feature_kind != "")
    assert method.feature_kind in ("", "stages", "preact")
    hash(method)  # jit may close over it or take it as a static argument


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_under_jit_with_bf16_inputs(name):
  method = make_method({"name": name, **REQUIRED.get(name, {})})
  inputs = _inputs()
  params, state = method.init(jax.random.key(0), inputs, **_init_extras(name))

  def loss(student_logits, teacher):
    moved = inputs.replace(student_logits=student_logits, teacher_logits=teacher[0],
                           teacher_features=teacher[1], teacher_preact_features=teacher[2])
    value, new_state, metrics = method.loss(params, state, moved, jax.random.key(1))
    return value, (new_state, metrics)

  teacher = (inputs.teacher_logits, inputs.teacher_features, inputs.teacher_preact_features)
  (value, (new_state, metrics)), (student_grad, teacher_grad) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(inputs.student_logits, teacher)
  assert value.dtype == jnp.float32 and np.isfinite(value)
  np.testing.assert_allclose(metrics["ce"] + metrics["distill"], value, rtol=1e-5)
  assert all(np.shape(v) == () and np.isfinite(v) for v in metrics.values())
  assert np.any(np.asarray(student_grad, np.float32) != 0)
  for leaf in jax.tree.leaves(teacher_grad):
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_check_ensemble_refuses_feature_methods_for_several_teachers():
  for name in METHODS:
    method = make_method({"name": name, **REQUIRED.get(name, {})})
    check_ensemble(method, 1)
    if method.uses_features:
      with pytest.raises(KdJaxError, match=f"distill method '{name}'"):
        check_ensemble(method, 3)
    else:
      check_ensemble(method, 3)


def test_methods_need_the_features_they_read():
  no_features = _inputs().replace(student_features=(), teacher_features=(),
                                  student_preact_features=(), teacher_preact_features=())
  for name in ("fitnet", "at", "sp", "pkt", "crd", "reviewkd"):
    method = make_method({"name": name, **REQUIRED.get(name, {})})
    with pytest.raises(KdJaxError, match=f"distill method '{name}' needs"):
      method.init(jax.random.key(0), no_features, **_init_extras(name))


def test_required_options_are_reported():
  with pytest.raises(KdJaxError, match="steps_per_epoch"):
    ReviewKD()
  with pytest.raises(KdJaxError, match="num_examples"):
    make_method({"name": "crd"})
  assert make_method({"name": "dkd", "warmup_epochs": 0}) == DKD(warmup_epochs=0)
  assert make_method({"name": "kd"}) == KD() and CRD(num_examples=3, nce_k=1).nce_k == 1


def test_make_method_takes_a_config_dict():
  config = ml_collections.ConfigDict({"name": "kd", "temperature": 2.0, "kd_weight": 9.0,
                                      "logit_standardization": True})
  assert make_method(config) == KD(temperature=2.0, kd_weight=9.0, logit_standardization=True)


@pytest.mark.parametrize("size,target", [((7, 5), (3, 2)), ((8, 8), (4, 4)), ((6, 3), (4, 3))])
def test_adaptive_avg_pool_matches_pytorchs_windows(size, target):
  x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  np.testing.assert_allclose(common.adaptive_avg_pool(jnp.asarray(x), target),
                             npm.adaptive_avg_pool(x, target), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size,target", [((3, 2), (7, 4)), ((4, 4), (2, 2)), ((2, 5), (4, 3))])
def test_nearest_resize_matches_pytorchs_rule(size, target):
  x = np.random.default_rng(2).normal(size=(2, *size, 3)).astype(np.float32)
  np.testing.assert_array_equal(common.nearest_resize(jnp.asarray(x), target),
                                npm.nearest_resize(x, target))
