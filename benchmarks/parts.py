"""Where a distillation step's time goes: one network's eval forward and train forward+backward.

  python -m benchmarks.parts --depth 20 --batch 128 --classes 100 --repeats 8 [--torch]

The fused step is m eval-mode teacher forwards + one train-mode student forward/backward + the
update, so these two numbers (and the input part that benchmarks.kd_step's epoch case times) explain
a step. Prints one JSON line per measurement (median and min milliseconds over --repeats calls).
With --torch, also times the same network in PyTorch eager (NCHW and channels-last), if torch is
installed.

  python -m benchmarks.parts --conv-layers [--torch]

times one 3x3 convolution of each PreResNet stage (16, 32 and 64 channels at 32x32, 16x16 and 8x8,
the batch from --batch) alone: forward, and forward plus both gradients (input and kernel). A
PreResNet-20 is 6 such convolutions per stage, so these records bound how fast any step built on
this backend's convolution kernels can be.

  python -m benchmarks.parts --small-convs [--batch 128] [--repeats 10]

times alternatives for the small convolutions of LeNet-5 (5x5, 1->6 at 28x28 'same', 6->16 at 14x14
'valid') and PreResNet's 16-channel stage (3x3, 16->16 at 32x32) on this backend: XLA's convolution
in NHWC/HWIO (flax's layout), in NCHW/OIHW and in NHWC/OIHW dimension numbers (inputs already in
that layout), and im2col (k*k shifted slices, one matmul); forward, and forward plus gradients
(kernel and input; kernel only for a first layer, whose input needs none). For the m = 3 teachers'
first convolution, which all read the same input, m convolutions against one with m times the output
channels. And LeNet-5's 2x2 pooling (flax max_pool / avg_pool, i.e. reduce_window, against a reshape
and a max / mean over the window axes, which gives the same values).

  python -m benchmarks.parts --sampling [--repeats 20]

times a train step's batch draw (indices + gather of the uint8 images), jitted, for Fashion-MNIST
(60,000 x 28x28x1) and CIFAR (50,000 x 32x32x3) sized sets at batch 128: `train.sample_batch`
against the whole-permutation draw it replaced (`jax.random.permutation` of the set every step).
"""

import argparse
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import cases as cases_lib
from benchmarks import harness, torch_reference
from kd_jax import runtime, train
from kd_jax.models import lenet


def _time_jax(fn, *args, repeats: int) -> dict:
  """harness.time_calls of fn(*args), each call waited for."""
  return harness.time_calls(lambda: jax.block_until_ready(fn(*args)), repeats)


def _jax_environment() -> dict:
  return {"framework": "jax", **harness.jax_environment()}


def _torch_environment(channels_last: bool) -> dict:
  torch = torch_reference.torch
  return {"framework": "torch", "device": f"torch {torch.__version__}",
          "threads": torch.get_num_threads(),
          "layout": "channels_last" if channels_last else "NCHW"}


def jax_parts(depth: int, batch: int, classes: int, precision: str, repeats: int) -> list:
  """Eval forward and train forward+backward (gradient of a scalar of the logits) of a PreResNet."""
  model = cases_lib.model(cases_lib.Case(depth=depth, classes=classes, precision=precision))
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, *cases_lib.IMAGE_SHAPE))
  variables = jax.jit(lambda key: model.init(key, x[:1], train=False))(jax.random.PRNGKey(1))

  eval_forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def loss(params, x):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  forward_backward = jax.jit(jax.grad(loss))
  common = {**_jax_environment(), "depth": depth, "batch": batch, "precision": precision}
  return [
      {**common, "part": "eval_forward",
       **_time_jax(eval_forward, variables, x, repeats=repeats)},
      {**common, "part": "train_forward_backward",
       **_time_jax(forward_backward, variables["params"], x, repeats=repeats)},
  ]


def torch_parts(depth: int, batch: int, classes: int, repeats: int, channels_last: bool) -> list:
  torch = torch_reference.torch
  net = torch_reference.PreResNet(depth, classes)
  x = torch.randn(batch, 3, 32, 32)
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

  def eval_forward():
    with torch.no_grad():
      net(x)

  def forward_backward():
    net.zero_grad(set_to_none=True)
    torch.log_softmax(net(x), dim=-1)[:, 0].mean().backward()

  common = {**_torch_environment(channels_last), "depth": depth, "batch": batch,
            "precision": "fp32"}
  net.eval()
  records = [{**common, "part": "eval_forward", **harness.time_calls(eval_forward, repeats)}]
  net.train()
  records.append({**common, "part": "train_forward_backward",
                  **harness.time_calls(forward_backward, repeats)})
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
    forward_backward = jax.jit(jax.grad(lambda p, x: jnp.sum(conv.apply(p, x) ** 2),
                                        argnums=(0, 1)))
    common = {**_jax_environment(), "channels": channels, "size": size, "batch": batch}
    records.append({**common, "part": "conv3x3_forward",
                    **_time_jax(forward, params, x, repeats=repeats)})
    records.append({**common, "part": "conv3x3_forward_backward",
                    **_time_jax(forward_backward, params, x, repeats=repeats)})
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
    records.append({**common, "part": "conv3x3_forward", **harness.time_calls(forward, repeats)})
    records.append({**common, "part": "conv3x3_forward_backward",
                    **harness.time_calls(forward_backward, repeats)})
  return records


# Small convolutions: (name, in channels, out channels, kernel, size, padding, whether the input
# needs a gradient)
SMALL_CONVS = (("lenet_conv1", 1, 6, 5, 28, "SAME", False),
               ("lenet_conv2", 6, 16, 5, 14, "VALID", True),
               ("preresnet_stage1_conv", 16, 16, 3, 32, "SAME", True))
# The m teachers' first convolution: (name, in channels, out channels, kernel, size, padding)
FIRST_CONVS = (("lenet_conv1", 1, 6, 5, 28, "SAME"), ("preresnet_stem", 3, 16, 3, 32, "SAME"))
# LeNet-5's pooled activations: (name, size, channels)
POOLED = (("lenet_pool1", 28, 6), ("lenet_pool2", 10, 16))

LAYOUTS = {"NHWC/HWIO": ("NHWC", "HWIO", "NHWC"), "NCHW/OIHW": ("NCHW", "OIHW", "NCHW"),
           "NHWC/OIHW": ("NHWC", "OIHW", "NHWC")}


def conv_in_layout(x, w, padding, layout):
  """XLA's convolution with x and w given in `layout` (a LAYOUTS key)."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=LAYOUTS[layout])


def conv_im2col(x, w, padding):
  """NHWC x HWIO convolution (stride 1) as k*k shifted slices of x and one matmul."""
  kernel = w.shape[0]
  if padding == "SAME":
    pad = kernel // 2
    x = jnp.pad(x, ((0, 0), (pad, kernel - 1 - pad), (pad, kernel - 1 - pad), (0, 0)))
  out_h, out_w = x.shape[1] - kernel + 1, x.shape[2] - kernel + 1
  patches = jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :] for i in range(kernel)
                             for j in range(kernel)], axis=-1)  # features ordered (kh, kw, in)
  return patches @ w.reshape(-1, w.shape[-1])


def to_layout(x, w, layout):
  """NHWC x and HWIO w transposed to `layout` (a LAYOUTS key)."""
  lhs, rhs, _ = LAYOUTS[layout]
  return (jnp.transpose(x, ["NHWC".index(d) for d in lhs]),
          jnp.transpose(w, ["HWIO".index(d) for d in rhs]))


def _forward_records(common: dict, forward, forward_backward, *args, repeats: int) -> list:
  """Two records: jit(forward)(*args) and jit(forward_backward)(*args) timed."""
  return [{**common, "part": "forward", **_time_jax(jax.jit(forward), *args, repeats=repeats)},
          {**common, "part": "forward_backward",
           **_time_jax(jax.jit(forward_backward), *args, repeats=repeats)}]


def _layout_records(batch: int, repeats: int) -> list:
  """Each small convolution in each layout and as im2col, forward and forward + gradients."""
  records = []
  for name, cin, cout, kernel, size, padding, input_grad in SMALL_CONVS:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, cin, cout)) * 0.1
    variants = {layout: (functools.partial(conv_in_layout, padding=padding, layout=layout),
                         *to_layout(x, w, layout)) for layout in LAYOUTS}
    variants["im2col"] = (functools.partial(conv_im2col, padding=padding), x, w)
    for variant, (conv, vx, vw) in variants.items():
      argnums = (0, 1) if input_grad else 1
      forward_backward = jax.grad(lambda vx, vw: jnp.sum(conv(vx, vw) ** 2), argnums)
      common = {**_jax_environment(), "conv": name, "variant": variant, "batch": batch}
      records += _forward_records(common, conv, forward_backward, vx, vw, repeats=repeats)
  return records


def _first_conv_records(batch: int, repeats: int, m: int) -> list:
  """The m teachers' first convolutions of one input: m of them against one m times as wide."""
  records = []
  for name, cin, cout, kernel, size, padding in FIRST_CONVS:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, cin))
    ws = jax.random.normal(jax.random.PRNGKey(1), (m, kernel, kernel, cin, cout)) * 0.1
    conv = functools.partial(conv_in_layout, padding=padding, layout="NHWC/HWIO")
    separate = jax.jit(lambda x, ws: [conv(x, w) for w in ws])
    # One convolution with m * cout outputs, split back into the m members' activations.
    fused = jax.jit(lambda x, ws: jnp.split(conv(x, jnp.concatenate(list(ws), axis=-1)), m, -1))
    common = {**_jax_environment(), "conv": name, "m": m, "batch": batch, "part": "forward"}
    records.append({**common, "variant": f"{m} convolutions",
                    **_time_jax(separate, x, ws, repeats=repeats)})
    records.append({**common, "variant": f"one with {m}x{cout} outputs",
                    **_time_jax(fused, x, ws, repeats=repeats)})
  return records


def _pooling_records(batch: int, repeats: int) -> list:
  """LeNet-5's 2x2 poolings: flax's reduce_window against a reshape and a max (lenet.max_pool)
  or a mean, forward and forward + gradient."""
  records = []

  def pool_2x2(pool):
    return functools.partial(pool, window_shape=(2, 2), strides=(2, 2))

  for name, size, channels in POOLED:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
    window = lambda x: x.reshape(x.shape[0], size // 2, 2, size // 2, 2, channels)
    variants = {"max_pool": pool_2x2(nn.max_pool), "reshape_max": pool_2x2(lenet.max_pool),
                "avg_pool": pool_2x2(nn.avg_pool),
                "reshape_mean": lambda x: jnp.mean(window(x), axis=(2, 4))}
    for variant, pool in variants.items():
      forward_backward = jax.grad(lambda x: jnp.sum(pool(x) ** 2))
      common = {**_jax_environment(), "pool": name, "variant": variant, "batch": batch}
      records += _forward_records(common, pool, forward_backward, x, repeats=repeats)
  return records


def small_convs(batch: int, repeats: int, m: int = 3) -> list:
  """Records of the --small-convs mode (see the module docstring)."""
  return (_layout_records(batch, repeats) + _first_conv_records(batch, repeats, m)
          + _pooling_records(batch, repeats))


# (name, train-set size, image shape) of the batch-draw cases
SAMPLING_SETS = (("fashion_mnist", 60_000, (28, 28, 1)), ("cifar", 50_000, (32, 32, 3)))


def permutation_sample_batch(rng, step, images, labels, batch_size: int):
  """The batch draw that train.sample_batch replaced: the epoch's whole permutation, rebuilt every
  step (O(N log N)). Keyed by (rng, epoch) alone: which key it is does not change the time."""
  steps_per_epoch = images.shape[0] // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  key = jax.random.fold_in(rng, epoch)
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
      steps = iter(range(repeats + 1))
      draw_next = lambda: fn(rng, next(steps), images, labels, batch)  # noqa: E731
      records.append({**_jax_environment(), "part": "batch_draw", "set": name, "train_size": size,
                      "batch": batch, "method": method,
                      **_time_jax(draw_next, repeats=repeats)})
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--precision", choices=tuple(cases_lib.PRECISIONS), default="fp32")
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--torch", action="store_true", help="also time PyTorch eager, if installed")
  parser.add_argument("--conv-layers", action="store_true",
                      help="time single 3x3 convolutions of each stage instead of whole networks")
  parser.add_argument("--small-convs", action="store_true",
                      help="time layouts, im2col and fused first convolutions for small "
                           "convolutions, and LeNet-5's pooling")
  parser.add_argument("--sampling", action="store_true",
                      help="time the train step's batch draw (old whole permutation vs "
                           "sample_batch)")
  args = parser.parse_args(argv)
  runtime.add_cpu_xla_flags()  # as run.py's setup does, before the first JAX computation
  if args.sampling or args.small_convs:
    for record in (sampling if args.sampling else small_convs)(args.batch, args.repeats):
      print(json.dumps(record), flush=True)
    return
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
