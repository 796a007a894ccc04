"""SN-GAN samples as distillation data (paper Fig. 4): the GAN trains and resumes exactly, its losses
and the FID match independent computations, and the distillation policy mixes the stated fraction of
synthetic images without ever changing or differentiating the generator."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.linalg

from conftest import tiny_config
from kd_jax import checkpoint, distill, fid, gan, study, train
from kd_jax import config as kd_config
from kd_jax.errors import Interrupted, KdJaxError
from kd_jax.models import build_model, sngan
from kd_jax.study import phases
from kd_jax.data import placement

STEPS = 6


def tiny_gan_config():
  """Seconds-long GAN on digits (8x8 grayscale): widths 8, 6 generator updates of 2 discriminator
  updates each, a checkpoint every 3."""
  config = kd_config.default_config()
  config.study = "gan"
  config.data.name = config.data.source = "digits"
  config.gan.update(dict(z_dim=8, generator_width=8, discriminator_width=8, steps=STEPS,
                         batch_size=16, discriminator_steps=2, learning_rate=1e-3,
                         sample_grid=4))
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  return config


def _generator(workdir):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, gan.GENERATOR_DIR))


@pytest.fixture(scope="module")
def trained_gan(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gan"))
  results = study.run(tiny_gan_config(), workdir)  # study='gan' dispatches to kd_jax.gan.run
  assert results["gan"]["steps"] == STEPS
  return workdir


@pytest.mark.e2e
def test_tiny_gan_trains_with_finite_losses(trained_gan):
  with open(os.path.join(trained_gan, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  losses = [r for r in records if "generator_loss" in r]
  assert [r["step"] for r in losses] == [3, 6]
  for r in losses:
    assert np.isfinite([r["generator_loss"], r["discriminator_loss"], r["param_norm"]]).all()
    assert r["discriminator_loss"] >= 0.0  # a sum of hinges
  assert os.path.isfile(os.path.join(trained_gan, gan.SAMPLES_FILE))
  variables = _generator(trained_gan)
  assert set(variables) == {"params", "batch_stats"}


@pytest.mark.e2e
def test_interrupted_gan_resumes_to_the_same_generator(trained_gan, tmp_path, monkeypatch):
  """A run stopped right after its step-3 checkpoint and rerun ends bit-identical to one that ran
  through: the real batches, z draws and augmentations come from (rng, step)."""
  workdir = str(tmp_path / "interrupted")
  save_state = checkpoint.save_state

  def save_then_stop(manager, step, state, **kwargs):
    save_state(manager, step, state, **kwargs)
    raise Interrupted(f"stopped after step {step}")

  monkeypatch.setattr(checkpoint, "save_state", save_then_stop)
  with pytest.raises(Interrupted):
    study.run(tiny_gan_config(), workdir)
  monkeypatch.setattr(checkpoint, "save_state", save_state)
  assert sorted(os.listdir(os.path.join(workdir, "gan"))) == ["3"]
  assert not os.path.exists(os.path.join(workdir, gan.GENERATOR_DIR))
  study.run(tiny_gan_config(), workdir)
  jax.tree.map(np.testing.assert_array_equal, _generator(trained_gan), _generator(workdir))


def test_hinge_losses_match_numpy():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=16).astype(np.float32) * 2, rng.normal(size=12).astype(np.float32) * 2
  expected_d = np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake))
  np.testing.assert_allclose(gan.discriminator_hinge_loss(real, fake), expected_d, rtol=1e-6)
  np.testing.assert_allclose(gan.generator_hinge_loss(fake), -np.mean(fake), rtol=1e-6)
  assert gan.discriminator_hinge_loss(jnp.asarray(real, jnp.bfloat16), fake).dtype == jnp.float32


def test_fid_matches_an_independent_computation():
  """scipy's sqrtm of S1 S2 against Tr((S1^1/2 S2 S1^1/2)^1/2) from symmetric eigendecompositions;
  the batched float64 moments against NumPy's mean and cov."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
  b = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 0.5
  moments = []
  for x in (a, b):
    acc = fid.FeatureMoments()
    for chunk in np.array_split(x.astype(np.float32), 7):
      acc.add(chunk)
    mean, cov = acc.mean_covariance()
    x64 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)
    moments.append((mean, cov))
  (m1, s1), (m2, s2) = moments
  w, v = np.linalg.eigh(s1)
  root_1 = (v * np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root_1 @ s2 @ root_1)
  expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
  np.testing.assert_allclose(fid.frechet_distance(m1, s1, m2, s2), expected, rtol=1e-8)
  assert abs(fid.frechet_distance(m1, s1, m1, s1)) < 1e-8
  assert np.allclose(scipy.linalg.sqrtm(s1).real @ scipy.linalg.sqrtm(s1).real, s1)


def test_sampler_gives_pixels_and_no_generator_gradient():
  generator = sngan.Generator(image_size=8, channels=1, width=8)
  variables = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)), train=False)
  for batch_norm in ("batch", "running"):
    sample = gan.make_sampler(generator, 8, batch_norm)
    images = sample(variables, jax.random.PRNGKey(1), 5)
    assert images.shape == (5, 8, 8, 1) and images.min() >= 0.0 and images.max() <= 255.0
    grads = jax.grad(lambda v: jnp.sum(sample(v, jax.random.PRNGKey(1), 5)))(variables)
    assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_original_synthetic_count_and_real_batch():
  assert distill.synthetic_count(0.2, 128) == 25  # the original: int(0.2 * 128) synthetic, 103 real
  config = kd_config.default_config()
  config.distill.synthetic_fraction, config.distill.synthetic_workdir = 0.2, "somewhere"
  assert phases.real_batch_size(config) == 103
  config.data.augment = "none"
  assert not phases.caches_teacher_logits(config)  # fresh synthetic images each step


def _digits_data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return placement.DeviceData(train_images=jnp.asarray(images), train_labels=jnp.asarray(labels),
                          test_images=jnp.asarray(images[:8]), test_labels=jnp.asarray(labels[:8]),
                          mean=jnp.full((1,), 0.5), std=jnp.full((1,), 0.25))


def test_distill_step_mixes_the_stated_fraction_without_generator_gradients():
  """Batch 20 at fraction 0.2: 16 real images (the step's sample_indices at batch 16, their labels
  scored) and 4 generator samples (label -1, not scored), all 20 seen by teachers and student; the
  generator's variables are unchanged and get no gradient from the step's loss."""
  batch, fraction, num_synthetic = 20, 0.2, 4
  generator = sngan.Generator(image_size=8, channels=1, width=8)
  generator_variables = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)), train=False)
  before = jax.tree.map(np.array, generator_variables)
  seen = {}
  sample = gan.make_sampler(generator, 8, "batch")

  def recording_sampler(variables, key, n):
    seen["synthetic"] = n
    return sample(variables, key, n)

  teacher = build_model(kd_config.model_config(name="digits_cnn", width=4), 10)
  student = build_model(kd_config.model_config(name="mlp", width=8), 10)
  teacher_variables = jax.tree.map(lambda x: x[None], teacher.init(
      jax.random.PRNGKey(2), jnp.zeros((1, 8, 8, 1)), train=False))
  tx = train.make_optimizer(kd_config.optimizer_config(), 10, 5)
  data = _digits_data()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  spec = distill.DistillSpec(
      batch_size=batch, augment=lambda key, x: x.astype(jnp.float32),
      method=distill.LogitKD(temperature=4.0, alpha=0.0),
      extra=distill.SyntheticImages(recording_sampler, distill.synthetic_count(fraction, batch), 1.0))
  step = train.make_distill_step(student, teacher, tx, spec, mesh)
  fresh = lambda: train.create_state(student, tx, jax.random.PRNGKey(3), (8, 8, 1))  # noqa: E731
  state = fresh()
  # The logged accuracy scores exactly the 16 real images of the step's indices at batch 16.
  real = train.sample_indices(state.rng, state.step, 64, batch - num_synthetic)
  student_logits = student.apply({"params": state.params}, (
      (data.train_images[real].astype(jnp.float32) / 255.0 - 0.5) / 0.25), train=False)
  expected = np.mean(np.argmax(student_logits, -1) == np.asarray(data.train_labels)[real])

  _, metrics = step(state, teacher_variables, data, generator_variables=generator_variables)
  assert seen["synthetic"] == num_synthetic
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(generator_variables))
  np.testing.assert_allclose(metrics["accuracy"], expected, rtol=1e-6)

  # No gradient reaches the generator through the step's loss.
  grads = jax.grad(lambda v: step(fresh(), teacher_variables, data,
                                  generator_variables=v)[1]["loss"])(generator_variables)
  assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_mixed_objective_weights_real_and_synthetic_temperatures():
  rng = np.random.default_rng(4)
  student, teacher = rng.normal(size=(10, 5)), rng.normal(size=(10, 5))

  def tempered_ce(s, t, tau):
    p = np.exp(t / tau) / np.exp(t / tau).sum(-1, keepdims=True)
    log_q = s / tau - np.log(np.exp(s / tau).sum(-1, keepdims=True))
    return -tau**2 * (p * log_q).sum(-1)

  expected = np.concatenate([tempered_ce(student[:7], teacher[:7], 4.0),
                             tempered_ce(student[7:], teacher[7:], 1.0)]).mean()
  got = distill.mixed_objective(distill.LogitKD(temperature=4.0), jnp.asarray(student, jnp.float32),
                                jnp.asarray(teacher, jnp.float32), jnp.zeros(10, jnp.int32), None,
                                distill.SyntheticImages(sampler=None, count=3, temperature=1.0))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.e2e
def test_missing_generator_is_one_line_before_the_workdir_is_touched(tmp_path):
  config = tiny_config()
  config.distill.synthetic_workdir = str(tmp_path / "no_gan")
  config.distill.synthetic_fraction = 0.25
  workdir = tmp_path / "run"
  with pytest.raises(KdJaxError, match="generator workdir .* has no config.json"):
    study.run(config, str(workdir))
  assert not workdir.exists()


@pytest.mark.e2e
def test_distillation_with_a_trained_generator_runs_and_reports(trained_gan, tmp_path):
  config = tiny_config(teacher_steps=4, student_steps=4, ensemble_size=1)
  config.distill.synthetic_workdir = trained_gan
  config.distill.synthetic_fraction = 0.25  # 8 of the batch of 32
  results = study.run(config, str(tmp_path / "run"))
  assert 0.0 <= results["student"]["test_agreement"] <= 1.0
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    student = [json.loads(line) for line in f if '"student"' in line]
  assert all(np.isfinite(r["loss"]) for r in student if "loss" in r)


def test_sngan_shapes_and_spectral_norm_state():
  assert sngan.start_size(32) == (4, 3) and sngan.start_size(28) == (7, 2)
  generator = sngan.Generator(image_size=32, channels=3, width=8)
  discriminator = sngan.Discriminator(width=8)
  g = generator.init(jax.random.PRNGKey(0), jnp.zeros((2, 16)), train=False)
  images = generator.apply(g, jax.random.normal(jax.random.PRNGKey(1), (2, 16)))
  assert images.shape == (2, 32, 32, 3) and float(jnp.max(jnp.abs(images))) <= 1.0
  d = discriminator.init(jax.random.PRNGKey(2), images)
  sigmas = [v for k, v in jax.tree_util.tree_leaves_with_path(d["batch_stats"])
            if "sigma" in jax.tree_util.keystr(k)]
  # Every Conv and Dense: 2 per block x 4, the first block's 1x1 bypass (3 -> 8 channels), the output.
  assert len(sigmas) == 10
  scores, updates = discriminator.apply(d, images, update_stats=True, mutable=["batch_stats"])
  assert scores.shape == (2,)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), updates["batch_stats"],
                         d["batch_stats"])
  assert any(jax.tree.leaves(changed))  # a power-iteration step


@pytest.mark.parametrize("overrides, message", [
    ({"distill.synthetic_fraction": 0.2}, "needs both config.distill.synthetic_workdir"),
    ({"distill.synthetic_workdir": "g"}, "needs both config.distill.synthetic_workdir"),
    ({"distill.synthetic_workdir": "g", "distill.synthetic_fraction": 1.0}, "must lie in"),
    ({"distill.synthetic_workdir": "g", "distill.synthetic_fraction": 0.2, "distill.alpha": 0.5},
     "alpha=0"),
    ({"distill.synthetic_batch_norm": "eval"}, "synthetic_batch_norm"),
    ({"study": "vae"}, "config.study='vae'"),
])
def test_validate_rejects_bad_synthetic_and_study_settings(overrides, message):
  config = kd_config.default_config()
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  with pytest.raises(KdJaxError, match=message):
    kd_config.validate(config)
