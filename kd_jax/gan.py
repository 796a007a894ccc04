"""SN-GAN training (study='gan') and the generator as a source of distillation data (paper Fig. 4).

    python run.py --config=configs/gan_fashion_mnist.py --workdir=runs/gan_fmnist

trains (kd_jax/study/gan.py drives the run) the SN-GAN of kd_jax/models/sngan.py on config.data's train split with the original code's
recipe (samuelstanton/gnosis, gnosis/boilerplate/gan_epoch.py, config/image_generation.yaml): hinge
loss, Adam (beta1 0, beta2 0.9) for both networks with one learning rate decaying linearly over the
generator updates, and per generator update `discriminator_steps` discriminator updates, each on the
next real batch (the original updates the generator on every 5th minibatch and the discriminator on
every one). A compiled step is one generator update followed by its discriminator updates; the real
batches come from kd_jax.train.sample_indices at (rng, step * discriminator_steps + j), so a resumed
run replays the batches of an uninterrupted one. At the end the workdir holds generator/ (its
variables, what config.distill.synthetic_workdir loads), samples.png and results.json.

Pixel scales: the generator's tanh output lies in [-1, 1], the original's 'unitcube' normalization of
[0, 1] pixels; the classifiers read [0, 255] images before their own standardization. `to_unit` and
`to_pixels` convert.
"""

import functools
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import checkpoint, parallel, train
from kd_jax import config as config_lib
from kd_jax import workdir as workdir_lib
from kd_jax.data.placement import DeviceData
from kd_jax.errors import KdJaxError
from kd_jax.models import sngan

MAX_PIXEL = 255.0
GENERATOR_DIR = "generator"
SAMPLES_FILE = "samples.png"
# fold_in tags under a step's key.
_GENERATOR_Z, _DISCRIMINATOR = 0, 1


def to_unit(pixels):
  """[0, 255] pixels (uint8 or float) -> [-1, 1], the generator's scale."""
  return pixels.astype(jnp.float32) / (MAX_PIXEL / 2) - 1.0


def to_pixels(unit):
  """[-1, 1] -> [0, 255] float pixels, the scale of the real uint8 images before normalization."""
  return (jnp.clip(unit.astype(jnp.float32), -1.0, 1.0) + 1.0) * (MAX_PIXEL / 2)


def discriminator_hinge_loss(real_scores, fake_scores):
  """Hinge loss of the discriminator (Lim & Ye 2017; Miyato et al. 2018), float32:

    L_D = E_real[max(0, 1 - D(x))] + E_fake[max(0, 1 + D(G(z)))].

  It is the hinge (SVM) loss of classifying real as +1 and fake as -1 with margin 1: a real image
  scored D(x) >= 1 or a fake scored <= -1 costs nothing, so the discriminator stops pushing on images
  it already separates. Gradient: -1 per real image with D(x) < 1 and +1 per fake with D(G(z)) > -1,
  each divided by its batch size. Each mean is over its own batch, as the original
  (F.relu(1 - real).mean() + F.relu(1 + fake).mean()).
  """
  real = jnp.mean(jax.nn.relu(1.0 - real_scores.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.relu(1.0 + fake_scores.astype(jnp.float32)))
  return real + fake


def generator_hinge_loss(fake_scores):
  """The generator's side of the hinge GAN, float32: L_G = -E_z[D(G(z))].

  Not the hinge: the generator raises the discriminator's raw score of its samples without a margin
  (Miyato et al. 2018, eq. 17); its gradient w.r.t. each score is -1 / batch size.
  """
  return -jnp.mean(fake_scores.astype(jnp.float32))


@flax.struct.dataclass
class GanState:
  step: jax.Array  # int32 scalar: generator updates taken
  generator: Any  # params
  generator_stats: Any  # BatchNorm statistics
  discriminator: Any  # params
  discriminator_stats: Any  # spectral normalization's power-iteration vectors (u, sigma)
  generator_opt: Any
  discriminator_opt: Any
  rng: jax.Array  # raw uint32 key: batches, z and augmentation derive from it and `step`


def learning_rate_schedule(cfg) -> optax.Schedule:
  """The original's linear decay from learning_rate to final_learning_rate over `steps` generator
  updates (gnosis/utils/optim.py get_decay_fn), then constant."""
  return optax.linear_schedule(cfg.learning_rate, cfg.final_learning_rate, cfg.steps)


def _adam(cfg):
  """Adam's direction, without the learning rate: the rate comes from the generator's step count
  (the discriminator takes several updates per step, all at that step's rate, as the original)."""
  return optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=1e-8)


def create_state(generator, discriminator, cfg, rng, image_shape) -> GanState:
  generator_key, discriminator_key, train_key = jax.random.split(rng, 3)
  g = generator.init(generator_key, jnp.zeros((1, cfg.z_dim), jnp.float32), train=False)
  d = discriminator.init(discriminator_key, jnp.zeros((1, *image_shape), jnp.float32))
  tx = _adam(cfg)
  return GanState(
      step=jnp.zeros((), jnp.int32), generator=g["params"], generator_stats=g["batch_stats"],
      discriminator=d["params"], discriminator_stats=d["batch_stats"],
      generator_opt=tx.init(g["params"]), discriminator_opt=tx.init(d["params"]), rng=train_key)


def make_train_step(generator, discriminator, cfg, *, augment, mesh):
  """Compiled step(state, data) -> (state, metrics): one generator update, then
  cfg.discriminator_steps discriminator updates (see the module docstring). Its parts (the two
  losses, the updates, the scan over discriminator steps) are closures over the networks and cfg, so
  the compiled program reads in one place; hence the length."""
  tx, schedule = _adam(cfg), learning_rate_schedule(cfg)
  batch_size, n_dis = cfg.batch_size, cfg.discriminator_steps

  def generate(params, stats, key):
    z = parallel.shard_batch(jax.random.normal(key, (batch_size, cfg.z_dim), jnp.float32), mesh)
    images, updates = generator.apply({"params": params, "batch_stats": stats}, z, train=True,
                                      mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def discriminate(params, stats, images):
    scores, updates = discriminator.apply({"params": params, "batch_stats": stats}, images,
                                          update_stats=True, mutable=["batch_stats"])
    return scores, updates["batch_stats"]

  def apply_update(params, opt_state, grads, rate):
    direction, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, jax.tree.map(lambda u: -rate * u, direction)), opt_state

  def step(state: GanState, data: DeviceData):
    key = train.step_key(state)
    rate = schedule(state.step)

    # Generator update. As in PyTorch, the discriminator's forward pass in train mode advances its
    # power iteration, and the generator's BatchNorm its running statistics.
    def generator_loss(params):
      fake, g_stats = generate(params, state.generator_stats, jax.random.fold_in(key, _GENERATOR_Z))
      scores, d_stats = discriminate(state.discriminator, state.discriminator_stats, fake)
      return generator_hinge_loss(scores), (g_stats, d_stats)

    (g_loss, (g_stats, d_stats)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.generator)
    g_params, g_opt = apply_update(state.generator, state.generator_opt, g_grads, rate)

    def discriminator_update(carry, j):
      d_params, d_stats, d_opt, g_stats = carry
      d_key = jax.random.fold_in(jax.random.fold_in(key, _DISCRIMINATOR), j)
      augment_key, z_key = jax.random.split(d_key)
      images, _ = train.sample_batch(state.rng, state.step * n_dis + j, data.train_images,
                                     data.train_labels, batch_size)
      real = parallel.shard_batch(to_unit(augment(augment_key, images)), mesh)
      fake, g_stats = generate(g_params, g_stats, z_key)
      fake = jax.lax.stop_gradient(fake)

      def loss_fn(params):
        # Two forward passes, real then fake, each one power-iteration step (the original's order).
        real_scores, stats = discriminate(params, d_stats, real)
        fake_scores, stats = discriminate(params, stats, fake)
        return discriminator_hinge_loss(real_scores, fake_scores), (
            stats, jnp.mean(real_scores), jnp.mean(fake_scores))

      (loss, (d_stats, real_score, fake_score)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(d_params)
      d_params, d_opt = apply_update(d_params, d_opt, grads, rate)
      return (d_params, d_stats, d_opt, g_stats), (loss, real_score, fake_score)

    (d_params, d_stats, d_opt, g_stats), (d_losses, real_scores, fake_scores) = jax.lax.scan(
        discriminator_update, (state.discriminator, d_stats, state.discriminator_opt, g_stats),
        jnp.arange(n_dis))
    new_state = state.replace(step=state.step + 1, generator=g_params, generator_stats=g_stats,
                              discriminator=d_params, discriminator_stats=d_stats,
                              generator_opt=g_opt, discriminator_opt=d_opt)
    metrics = {"generator_loss": g_loss, "discriminator_loss": jnp.mean(d_losses),
               "real_score": jnp.mean(real_scores), "fake_score": jnp.mean(fake_scores),
               "generator_grad_norm": optax.tree.norm(g_grads),
               # Non-finite weights anywhere make this non-finite: the loop's divergence check.
               "param_norm": optax.tree.norm((g_params, d_params))}
    return new_state, metrics

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def make_sampler(generator, z_dim: int, batch_norm: str = "running"):
  """sample(variables, key, n) -> n generator images on the [0, 255] pixel scale (float32), with no
  gradient into the generator.

  batch_norm 'running': eval mode (the running statistics); 'batch': train mode, normalizing with the
  statistics of these n samples (the original's distillation sampler: its generator stays in train
  mode). Either way the generator's variables are left unchanged.
  """
  if batch_norm not in config_lib.SYNTHETIC_BATCH_NORMS:
    raise ValueError(f"batch_norm {batch_norm!r} is not one of {config_lib.SYNTHETIC_BATCH_NORMS}")

  def sample(variables, key, n: int):
    variables = jax.lax.stop_gradient(variables)
    z = jax.random.normal(key, (n, z_dim), jnp.float32)
    if batch_norm == "batch":
      images, _ = generator.apply(variables, z, train=True, mutable=["batch_stats"])
    else:
      images = generator.apply(variables, z, train=False)
    return jax.lax.stop_gradient(to_pixels(images))

  return sample


def sample_grid(images) -> np.ndarray:
  """(n, H, W, C) images in [0, 255] with n a square number -> one (r*H + r-1, ...) uint8 grid with
  1-pixel black lines between the tiles."""
  images = np.asarray(images)
  n, height, width, channels = images.shape
  rows = math.isqrt(n)
  if rows * rows != n:
    raise ValueError(f"a sample grid needs a square number of images, got {n}")
  grid = np.zeros((rows * (height + 1) - 1, rows * (width + 1) - 1, channels), np.uint8)
  for i, image in enumerate(np.clip(np.rint(images), 0, MAX_PIXEL).astype(np.uint8)):
    r, c = divmod(i, rows)
    grid[r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = image
  return grid


def write_png(path: str, grid) -> None:
  """Writes a (H, W, 1 or 3) uint8 array as a PNG, via a temporary name."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(grid)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  partial = path + ".tmp.png"
  image.save(partial)
  os.replace(partial, path)


def _generator_template(generator, z_dim: int):
  shapes = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((1, z_dim)),
                                                 train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def load_generator(workdir: str, image_shape):
  """(make, variables) for the generator a finished study='gan' run left in `workdir`: make(batch_norm)
  returns make_sampler's sample(variables, key, n) for that generator. Raises a one-line KdJaxError if
  the workdir holds no finished GAN run or its generator does not make images of `image_shape`."""
  hint = ("point config.distill.synthetic_workdir at the workdir of a finished GAN run (python run.py "
          "--config=configs/gan_fashion_mnist.py --workdir=...)")
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  generator_path = os.path.join(workdir, GENERATOR_DIR)
  if not os.path.isfile(config_path):
    raise KdJaxError(f"generator workdir {workdir} has no {workdir_lib.CONFIG_FILE}; {hint}.")
  saved = ml_collections.ConfigDict(workdir_lib.read_json(config_path, "the GAN run's config"))
  if saved.get("study") != "gan":
    raise KdJaxError(f"generator workdir {workdir} holds a {saved.get('study', 'kd')!r} study, not a "
                     f"GAN; {hint}.")
  if not os.path.isdir(generator_path):
    raise KdJaxError(f"generator workdir {workdir} has no finished generator ({GENERATOR_DIR}/ is "
                     f"missing: the GAN run is incomplete); rerun its command to finish it.")
  try:
    generator, _ = sngan.build(saved.gan, image_shape)
    variables = checkpoint.load_variables(generator_path, _generator_template(generator,
                                                                               saved.gan.z_dim))
  except (ValueError, KdJaxError, checkpoint.UnreadableCheckpoint) as e:
    raise KdJaxError(f"the generator in {generator_path} does not fit the distillation images of "
                     f"shape {tuple(image_shape)} or is unreadable ({str(e)[:200]}); {hint}.") from e
  return functools.partial(make_sampler, generator, saved.gan.z_dim), variables


__all__ = ["load_generator", "make_sampler", "make_train_step", "create_state", "to_unit",
           "to_pixels", "discriminator_hinge_loss", "generator_hinge_loss", "sample_grid",
           "write_png"]
