"""kd_jax/distill.py: the step's description, and the method seam of the fused distillation step."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_killed_student_resumes_to_the_same_result
from kd_jax import KdJaxError, distill, methods, parallel, train
from kd_jax import config as kd_config
from kd_jax.data import augment, placement
from kd_jax.models import build_model
from kd_jax.study import student as study_student
from tiny_config import tiny_config


def _data(mesh, n=64):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return placement.DeviceData(train_images=images, train_labels=labels, test_images=images,
                              test_labels=labels, mean=np.float32([0.4]), std=np.float32([0.3]))


@pytest.mark.parametrize("method", [methods.KD(temperature=4.0),
                                    methods.DKD(steps_per_epoch=2, warmup_epochs=3),
                                    methods.DIST()])
def test_the_fused_step_minimizes_the_methods_own_loss(method):
  """One step with a benchmark method equals plain SGD on that method's loss of the same batch."""
  mesh = parallel.make_mesh()
  model = build_model(kd_config.model_config(name="mlp", width=16), 10)
  data = _data(mesh)
  teacher_table = jnp.asarray(np.random.default_rng(1).normal(size=(64, 10)), jnp.float32)
  tx = optax.sgd(0.5)
  spec = distill.DistillSpec(batch_size=16, augment=augment.make_policy("none"), method=method,
                             teachers=distill.CACHED_LOGITS)
  step = train.make_distill_step(model, model, tx, spec, mesh)
  state = train.create_state(model, tx, jax.random.PRNGKey(3), (8, 8, 1))
  state = state.replace(step=jnp.int32(3))  # inside DKD's warm-up: the step count must reach it
  params = state.params

  indices = train.sample_indices(state.rng, state.step, 64, 16)
  x = augment.normalize(jnp.asarray(data.train_images)[indices], data.mean, data.std, jnp.float32)
  loss_key = jax.random.split(train.step_key(state), 3)[1]

  def method_loss(p):
    inputs = methods.MethodInputs(student_logits=model.apply({"params": p}, x),
                                  teacher_logits=teacher_table[indices],
                                  labels=jnp.asarray(data.train_labels)[indices], step=state.step)
    return method.loss({}, {}, inputs, loss_key)[0]

  expected = jax.tree.map(lambda w, g: w - 0.5 * g, params, jax.grad(method_loss)(params))
  new_state, metrics = step(jax.tree.map(jnp.array, state), teacher_table, data)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               new_state.params, expected)
  assert {"method_ce", "method_distill"} <= set(metrics)  # the method's own terms are logged


def test_the_spec_refuses_what_cannot_work():
  policy = augment.make_policy("none")
  with pytest.raises(ValueError, match="no cached logits"):
    distill.DistillSpec(batch_size=8, augment=policy, method=methods.FitNet(),
                        teachers=distill.CACHED_LOGITS)
  for extra in ({"streamed": True}, {"extra": distill.OodReplacement(2)}):
    with pytest.raises(ValueError, match="index in the distillation set"):
      distill.DistillSpec(batch_size=8, augment=policy, method=methods.CRD(num_examples=10),
                          **extra)
  with pytest.raises(ValueError, match="paper's objective"):
    distill.DistillSpec(batch_size=8, augment=policy, method=methods.KD(),
                        extra=distill.SyntheticImages(sampler=None, count=2))
  with pytest.raises(ValueError, match="fixed distillation set"):
    distill.DistillSpec(batch_size=8, augment=policy, method=distill.LogitKD(temperature=4.0),
                        teachers=distill.CACHED_LOGITS, extra=distill.OodReplacement(2))


def test_the_config_names_its_method_and_the_warm_up_counts_the_runs_epochs():
  config = tiny_config()
  assert isinstance(study_student.distill_method(config, 10), distill.LogitKD)
  config.distill.method = "dkd"
  config.distill.method_options = {"beta": 2.0}
  method = study_student.distill_method(config, 45)
  assert (method.beta, method.steps_per_epoch, method.alpha) == (2.0, 45, 1.0)
  config.distill.method, config.distill.method_options = "crd", {"nce_k": 8}
  assert study_student.distill_method(config, 45, num_examples=900).num_examples == 900
  config.distill.method = "dkd"
  config.distill.method_options = {"bta": 2.0}
  with pytest.raises(KdJaxError, match="no option bta"):
    study_student.distill_method(config, 45)


@pytest.mark.parametrize("method, options, message", [
    ("fitnet", {}, "teacher.ensemble_size=1"), ("nope", {}, "is not valid"),
    ("paper", {"beta": 1.0}, "method_options")])
def test_validation_refuses_methods_it_cannot_run(method, options, message):
  config = tiny_config()
  config.distill.method = method
  config.distill.method_options = options
  with pytest.raises(KdJaxError, match=message):
    kd_config.validate(config)


def test_the_step_runs_every_method_and_the_config_knows_which_read_features():
  assert set(kd_config.DISTILL_METHODS) == {"paper", *methods.METHODS}
  assert {name for name, cls in methods.METHOD_CLASSES.items() if cls.uses_features} == set(
      kd_config.FEATURE_METHODS)
  assert set(kd_config.LOGIT_METHODS) | set(kd_config.FEATURE_METHODS) == set(methods.METHODS)


@pytest.mark.e2e
def test_a_dkd_run_killed_during_its_warm_up_resumes_to_the_same_result(tmp_path):
  args = ["--config=tests/tiny_config.py", "--config.distill.method=dkd",
          "--config.student.steps=40", "--config.checkpoint_every_steps=8"]
  assert_killed_student_resumes_to_the_same_result(args, tmp_path, "16")
