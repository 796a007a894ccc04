"""The SN-GAN study (config.study = "gan"): trains the generator whose samples later serve as
distillation data (kd_jax/gan.py has the GAN's losses, state, steps and sampler;
kd_jax/models/sngan.py its networks).

    python run.py --config=configs/gan_fashion_mnist.py --workdir=runs/gan_fmnist
"""

import functools
import math
import os

import jax
import numpy as np

from kd_jax import checkpoint, gan, loop, metrics_log, parallel, runtime
from kd_jax import workdir as workdir_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import load_dataset, placement
from kd_jax.errors import KdJaxError
from kd_jax.models import sngan
from kd_jax.study import phases


def run(config, workdir: str) -> dict:
  """Trains (or resumes) the SN-GAN of a validated `config` in `workdir`; returns its results."""
  cfg = config.gan
  augment = augment_lib.make_policy(cfg.augment)
  if math.isqrt(cfg.sample_grid) ** 2 != cfg.sample_grid:
    raise KdJaxError(f"config.gan.sample_grid={cfg.sample_grid} must be a square number (e.g. 64).")
  dataset = load_dataset(config.data)
  image_shape = tuple(dataset.train_images.shape[1:])
  try:
    generator, discriminator = sngan.build(cfg, image_shape)
  except ValueError as e:
    raise KdJaxError(f"config.data: {e}; the SN-GAN needs square images of such a size.") from e
  num_train = dataset.train_images.shape[0]
  if cfg.batch_size > num_train:
    raise KdJaxError(f"config.gan.batch_size={cfg.batch_size} exceeds the {num_train} training "
                     "images; lower it.")
  mesh = parallel.make_mesh()
  parallel.check_batch_size(cfg.batch_size, mesh, "config.gan.batch_size")
  workdir = os.path.abspath(workdir)
  resuming = workdir_lib.prepare(workdir, config)

  # Only the training images matter; normalization statistics are unused (the GAN reads [-1, 1]).
  channels = image_shape[-1]
  data = parallel.replicate(placement.DeviceData(
      train_images=dataset.train_images, train_labels=dataset.train_labels.astype(np.int32),
      test_images=dataset.test_images[:1], test_labels=dataset.test_labels[:1].astype(np.int32),
      mean=np.zeros(channels, np.float32), std=np.ones(channels, np.float32)), mesh)
  ctx = phases.Context(config=config, workdir=workdir, mesh=mesh,
                       log=metrics_log.MetricsLog(workdir), image_shape=image_shape)
  phases.announce(ctx, f"kd_jax GAN: {dataset.name} ({num_train} train images {image_shape})",
                  resuming)
  key = jax.random.PRNGKey(config.seed)
  fresh = jax.jit(lambda r: gan.create_state(generator, discriminator, cfg, r, image_shape),
                  out_shardings=parallel.replicated_sharding(mesh))(key)
  step_fn = gan.make_train_step(generator, discriminator, cfg, augment=augment, mesh=mesh)
  manager = checkpoint.make_manager(os.path.join(workdir, "gan"))
  state, start = checkpoint.restore_latest(manager, fresh)
  if start:
    print(f"[gan] resuming at step {start}/{cfg.steps}", flush=True)
  real_per_step = cfg.batch_size * cfg.discriminator_steps
  phase = loop.Phase(name="gan", total=cfg.steps, steps_per_epoch=max(num_train // real_per_step, 1),
                     images_per_step=real_per_step, learning_rate=gan.learning_rate_schedule(cfg),
                     hint="config.gan.learning_rate")
  state = phases.fit(ctx, functools.partial(step_fn, data=data), state, phase, manager, start)
  variables = jax.device_get({"params": state.generator, "batch_stats": state.generator_stats})
  with runtime.deferred_signals():
    checkpoint.save_variables(os.path.join(workdir, gan.GENERATOR_DIR), variables)
  runtime.raise_if_stopped()
  sample = jax.jit(gan.make_sampler(generator, cfg.z_dim, "running"), static_argnums=2)
  grid = gan.sample_grid(sample(variables, jax.random.fold_in(key, 1), cfg.sample_grid))
  gan.write_png(os.path.join(workdir, gan.SAMPLES_FILE), grid)
  results = {"gan": {"steps": int(state.step), "samples": gan.SAMPLES_FILE,
                     "generator": gan.GENERATOR_DIR}}
  workdir_lib.write_results(workdir, results)
  workdir_lib.release(workdir)
  print(f"[gan] done: generator in {os.path.join(workdir, gan.GENERATOR_DIR)}, samples in "
        f"{os.path.join(workdir, gan.SAMPLES_FILE)}", flush=True)
  return results
