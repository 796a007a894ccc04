"""Where a distillation step's time goes: one network's eval forward and train forward+backward.

  python -m benchmarks.parts --depth 20 --batch 128 --classes 100 --repeats 8 [--torch]

The fused step is m eval-mode teacher forwards + one train-mode student forward/backward + the update,
so these two numbers (and the input part that benchmarks.kd_step's epoch case times) explain a step.
Prints one JSON line per measurement (median and min milliseconds over --repeats calls). With --torch,
also times the same network in PyTorch eager (NCHW and channels-last), if torch is installed.

  python -m benchmarks.parts --conv-layers [--torch]

times one 3x3 convolution of each PreResNet stage (16, 32 and 64 channels at 32x32, 16x16 and 8x8,
the batch from --batch) alone: forward, and forward plus both gradients (input and kernel). A
PreResNet-20 is 6 such convolutions per stage, so these records bound how fast any step built on
this backend's convolution kernels can be.

  python -m benchmarks.parts --sampling [--repeats 20]

times a train step's batch draw (indices + gather of the uint8 images), jitted, for Fashion-MNIST
(60,000 x 28x28x1) and CIFAR (50,000 x 32x32x3) sized sets at batch 128: `train.sample_batch`
against the whole-permutation draw it replaced (`jax.random.permutation` of the set every step).
"""

import argparse
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import kd_step, torch_reference
from kd_jax import config as config_lib
from kd_jax import train  # noqa: F401  (importing it applies kd_jax's CPU XLA flags, as run.py does)
from kd_jax.models import build_model


def _time(fn, repeats: int) -> dict:
  fn()  # compile / first-call work
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"median_ms": round(statistics.median(times) * 1e3, 2), "min_ms": round(min(times) * 1e3, 2)}


def _jax_environment() -> dict:
  return {"framework": "jax", "backend": jax.default_backend(), "device": kd_step.device_name(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _torch_environment(channels_last: bool) -> dict:
  torch = torch_reference.torch
  return {"framework": "torch", "device": f"torch {torch.__version__}",
          "threads": torch.get_num_threads(), "layout": "channels_last" if channels_last else "NCHW"}


def jax_parts(depth: int, batch: int, classes: int, precision: str, repeats: int) -> list:
  """Eval forward and train forward+backward (gradient of a scalar of the logits) of one PreResNet."""
  model = build_model(config_lib.model_config(name="preresnet", depth=depth), classes,
                      kd_step.PRECISIONS[precision])
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, *kd_step.IMAGE_SHAPE))
  variables = jax.jit(lambda key: model.init(key, x[:1], train=False))(jax.random.PRNGKey(1))

  eval_forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def loss(params, x):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  forward_backward = jax.jit(jax.grad(loss))
  common = {**_jax_environment(), "depth": depth, "batch": batch, "precision": precision,
            "batchnorm": kd_step.batchnorm_impl()}
  return [
      {**common, "part": "eval_forward",
       **_time(lambda: jax.block_until_ready(eval_forward(variables, x)), repeats)},
      {**common, "part": "train_forward_backward",
       **_time(lambda: jax.block_until_ready(forward_backward(variables["params"], x)), repeats)},
  ]


def torch_parts(depth: int, batch: int, classes: int, repeats: int, channels_last: bool) -> list:
  torch = torch_reference.torch
  net = torch_reference.PreResNet(depth, classes)
  x = torch.randn(batch, 3, 32, 32)
  if channels_last:
    net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

  def eval_forward():
    with torch.no_grad():
      net(x)

  def forward_backward():
    net.zero_grad(set_to_none=True)
    torch.log_softmax(net(x), dim=-1)[:, 0].mean().backward()

  common = {**_torch_environment(channels_last), "depth": depth, "batch": batch, "precision": "fp32"}
  net.eval()
  records = [{**common, "part": "eval_forward", **_time(eval_forward, repeats)}]
  net.train()
  records.append({**common, "part": "train_forward_backward", **_time(forward_backward, repeats)})
  return records


# (channels, height = width) of the 3x3 convolutions in a CIFAR PreResNet's three stages
STAGE_CONVS = ((16, 32), (32, 16), (64, 8))


def jax_conv_layers(batch: int, repeats: int) -> list:
  records = []
  for channels, size in STAGE_CONVS:
    conv = nn.Conv(channels, (3, 3), padding="SAME", use_bias=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
    params = conv.init(jax.random.PRNGKey(1), x[:1])
    forward = jax.jit(conv.apply)
    # The gradient of a scalar that reads every output makes XLA run the forward, the input
    # gradient and the kernel gradient: the three convolutions of a training step.
    forward_backward = jax.jit(jax.grad(lambda p, x: jnp.sum(conv.apply(p, x) ** 2), argnums=(0, 1)))
    common = {**_jax_environment(), "channels": channels, "size": size, "batch": batch}
    records.append({**common, "part": "conv3x3_forward",
                    **_time(lambda: jax.block_until_ready(forward(params, x)), repeats)})
    records.append({**common, "part": "conv3x3_forward_backward",
                    **_time(lambda: jax.block_until_ready(forward_backward(params, x)), repeats)})
  return records


def torch_conv_layers(batch: int, repeats: int, channels_last: bool) -> list:
  torch = torch_reference.torch
  records = []
  for channels, size in STAGE_CONVS:
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    x = torch.randn(batch, channels, size, size)
    if channels_last:
      conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(
          memory_format=torch.channels_last)
    x.requires_grad_(True)

    def forward():
      with torch.no_grad():
        conv(x)

    def forward_backward():
      conv.zero_grad(set_to_none=True)
      x.grad = None
      (conv(x) ** 2).sum().backward()

    common = {**_torch_environment(channels_last), "channels": channels, "size": size,
              "batch": batch}
    records.append({**common, "part": "conv3x3_forward", **_time(forward, repeats)})
    records.append({**common, "part": "conv3x3_forward_backward", **_time(forward_backward, repeats)})
  return records


# (name, train-set size, image shape) of the batch-draw cases
SAMPLING_SETS = (("fashion_mnist", 60_000, (28, 28, 1)), ("cifar", 50_000, (32, 32, 3)))


def permutation_sample_batch(rng, step, images, labels, batch_size: int):
  """The batch draw before issue 11: the epoch's whole permutation, rebuilt every step (O(N log N))."""
  steps_per_epoch = images.shape[0] // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  key = jax.random.fold_in(jax.random.fold_in(rng, train._ORDER_STREAM), epoch)  # pylint: disable=protected-access
  order = jax.random.permutation(key, images.shape[0])
  indices = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
  return images[indices], labels[indices]


def sampling(batch: int, repeats: int, sets=SAMPLING_SETS) -> list:
  """Median ms of one batch draw (a new step each call), old and new, for each set."""
  records = []
  for name, size, shape in sets:
    images = jnp.zeros((size, *shape), jnp.uint8)
    labels = jnp.zeros((size,), jnp.int32)
    rng = jax.random.PRNGKey(0)
    for method, draw in (("permutation", permutation_sample_batch),
                         ("sample_batch", train.sample_batch)):
      fn = jax.jit(draw, static_argnums=4)
      step = iter(range(10**9))
      records.append({**_jax_environment(), "part": "batch_draw", "set": name, "train_size": size,
                      "batch": batch, "method": method,
                      **_time(lambda: jax.block_until_ready(
                          fn(rng, next(step), images, labels, batch)), repeats)})
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--precision", choices=tuple(kd_step.PRECISIONS), default="fp32")
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--torch", action="store_true", help="also time PyTorch eager, if installed")
  parser.add_argument("--batchnorm", choices=("kd_jax", "flax"), default="kd_jax",
                      help="flax: time the model with flax.linen.BatchNorm (A/B of the custom VJP)")
  parser.add_argument("--conv-layers", action="store_true",
                      help="time single 3x3 convolutions of each stage instead of whole networks")
  parser.add_argument("--sampling", action="store_true",
                      help="time the train step's batch draw (old whole permutation vs sample_batch)")
  args = parser.parse_args(argv)
  if args.sampling:
    for record in sampling(args.batch, args.repeats):
      print(json.dumps(record), flush=True)
    return
  if args.batchnorm == "flax":
    kd_step.use_flax_batchnorm()
  if args.conv_layers:
    records = jax_conv_layers(args.batch, args.repeats)
    torch_records = lambda channels_last: torch_conv_layers(args.batch, args.repeats, channels_last)
  else:
    records = jax_parts(args.depth, args.batch, args.classes, args.precision, args.repeats)
    torch_records = lambda channels_last: torch_parts(args.depth, args.batch, args.classes,
                                                      args.repeats, channels_last)
  if args.torch:
    if torch_reference.available():
      for channels_last in (False, True):
        records += torch_records(channels_last)
    else:
      records.append({"framework": "torch", "skipped": "torch is not installed"})
  for record in records:
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
