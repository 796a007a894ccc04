"""A GAN's sample quality measured with our own classifier: the Frechet distance of features.

FID (Heusel et al. 2017) fits a Gaussian to a network's features of two image sets and reports

  FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),

the squared 2-Wasserstein distance between N(mu_1, S_1) and N(mu_2, S_2). The usual network is
Inception-v3 on ImageNet; here it is a classifier we trained on the same data (a teacher of a kd_jax
workdir), so the numbers compare images of one dataset with each other, not with published FIDs.
Features: 'logits' (the classifier's output) or 'stage' (its last sown stage activation, flattened:
LeNet-5's 5x5x16 conv output). Means and covariances accumulate in float64 over batches; the matrix
square root is scipy.linalg.sqrtm in float64.

    python -m kd_jax.fid --generator=runs/gan_fmnist --classifier=runs/small/<run> [--examples=N]

prints the FID against the classifier's training images of: generator samples (BatchNorm in train mode,
as the distillation sampler of the original, and with running statistics), the held-out test images
(the floor a perfect generator would reach at this sample size), and uniform noise.
"""

import argparse
import json
import os

import jax
import ml_collections
import numpy as np
import scipy.linalg

from kd_jax import workdir as workdir_lib
from kd_jax.data import augment as augment_lib
from kd_jax.errors import KdJaxError
from kd_jax.experiments import cli

FEATURE_KINDS = ("logits", "stage")


class FeatureMoments:
  """Running float64 sums for the mean and covariance of feature vectors, fed in batches."""

  def __init__(self):
    self.count, self.total, self.outer = 0, None, None

  def add(self, features) -> None:
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    if self.total is None:
      self.total, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
    self.count += x.shape[0]
    self.total += x.sum(axis=0)
    self.outer += x.T @ x

  def mean_covariance(self) -> tuple:
    """(mean, unbiased covariance), both float64."""
    if self.count < 2:
      raise ValueError("a covariance needs at least 2 feature vectors")
    mean = self.total / self.count
    covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return mean, covariance


def frechet_distance(mean_1, cov_1, mean_2, cov_2) -> float:
  """||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 sqrtm(S_1 S_2)) in float64.

  sqrtm of the (non-symmetric) product S_1 S_2 can pick up an imaginary part of rounding size, and
  fails for singular products; as in the reference implementation, a small multiple of the identity is
  added to both covariances when the result is not finite, and the real part is kept.
  """
  mean_1, mean_2 = np.asarray(mean_1, np.float64), np.asarray(mean_2, np.float64)
  cov_1, cov_2 = np.asarray(cov_1, np.float64), np.asarray(cov_2, np.float64)
  root = scipy.linalg.sqrtm(cov_1 @ cov_2)
  if not np.isfinite(root).all():
    offset = np.eye(cov_1.shape[0]) * 1e-6
    root = scipy.linalg.sqrtm((cov_1 + offset) @ (cov_2 + offset))
  root = np.real(root)
  diff = mean_1 - mean_2
  return float(diff @ diff + np.trace(cov_1) + np.trace(cov_2) - 2.0 * np.trace(root))


def make_feature_fn(model, kind: str, mean, std):
  """features(variables, pixels) for [0, 255] float pixels, standardized as in training."""
  if kind not in FEATURE_KINDS:
    raise ValueError(f"feature kind {kind!r} is not one of {FEATURE_KINDS}")

  @jax.jit
  def features(variables, pixels):
    x = augment_lib.normalize(pixels, mean, std)
    if kind == "logits":
      return model.apply(variables, x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    stages = state["intermediates"]
    last = stages[sorted(stages, key=lambda name: int(name[len("stage"):]))[-1]][0]
    return last.reshape(last.shape[0], -1)

  return features


def moments(feature_fn, variables, batches) -> tuple:
  """(mean, covariance) in float64 of feature_fn over an iterable of pixel batches."""
  acc = FeatureMoments()
  for pixels in batches:
    acc.add(jax.device_get(feature_fn(variables, pixels)))
  return acc.mean_covariance()


def _array_batches(images, batch_size: int):
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


def _load_classifier(workdir: str, member: int):
  """(model, variables, dataset, mean, std) of teacher `member` of a kd_jax workdir."""
  from kd_jax import parallel  # pylint: disable=g-import-not-at-top
  from kd_jax.data import placement  # pylint: disable=g-import-not-at-top
  from kd_jax.study import teachers  # pylint: disable=g-import-not-at-top
  from kd_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  from kd_jax.models import build_model  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    raise KdJaxError(f"classifier workdir {workdir} has no {workdir_lib.CONFIG_FILE}; give a kd_jax "
                     "run with trained teachers.")
  config = ml_collections.ConfigDict(workdir_lib.read_json(path, "the classifier run's config"))
  dataset = load_dataset(config.data)
  model = build_model(config.teacher.model, dataset.num_classes)
  image_shape = tuple(dataset.train_images.shape[1:])
  variables = jax.tree.map(lambda x: x[member], teachers.load_teachers(
      model, workdir, member + 1, image_shape, parallel.make_mesh()))
  mean, std = placement.standardization(*placement.channel_statistics(dataset.train_images))
  return model, variables, dataset, mean, std


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m kd_jax.fid", description=__doc__.split("\n")[0])
  parser.add_argument("--generator", required=True, help="workdir of a finished study='gan' run")
  parser.add_argument("--classifier", required=True,
                      help="a kd_jax workdir whose teacher member 0 (--member) gives the features")
  parser.add_argument("--member", type=int, default=0)
  parser.add_argument("--examples", type=int, default=10000,
                      help="generated and noise images scored (the test set: min of this and its size)")
  parser.add_argument("--features", choices=FEATURE_KINDS, nargs="+", default=list(FEATURE_KINDS))
  parser.add_argument("--batch", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  from kd_jax import gan  # pylint: disable=g-import-not-at-top
  with cli.exit_statuses():
    model, variables, dataset, mean, std = _load_classifier(args.classifier, args.member)
    image_shape = dataset.train_images.shape[1:]
    sampler, generator_variables = gan.load_generator(args.generator, image_shape)
  key = jax.random.PRNGKey(args.seed)
  n = args.examples

  def generated(batch_norm):
    sample = jax.jit(sampler(batch_norm), static_argnums=2)
    for i, start in enumerate(range(0, n, args.batch)):
      yield sample(generator_variables, jax.random.fold_in(key, i), min(args.batch, n - start))

  def noise():
    rng = np.random.default_rng(args.seed)
    for start in range(0, n, args.batch):
      yield rng.uniform(0, 255, (min(args.batch, n - start), *image_shape)).astype(np.float32)

  test = dataset.test_images[:n]
  sets = {"generator (BatchNorm batch statistics)": lambda: generated("batch"),
          "generator (BatchNorm running statistics)": lambda: generated("running"),
          f"test images ({len(test)})": lambda: _array_batches(test, args.batch),
          "uniform noise": noise}
  print(f"FID against the {len(dataset.train_images)} training images of {dataset.name}, features of "
        f"teacher {args.member} of {args.classifier}; {n} images per set")
  for kind in args.features:
    feature_fn = make_feature_fn(model, kind, mean, std)
    reference = moments(feature_fn, variables, _array_batches(dataset.train_images, args.batch))
    for name, batches in sets.items():
      score = frechet_distance(*reference, *moments(feature_fn, variables, batches()))
      print(json.dumps({"features": kind, "set": name, "fid": round(score, 4)}), flush=True)


if __name__ == "__main__":
  main()
