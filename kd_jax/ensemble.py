"""Stacked ensembles: m sets of parameters with a leading member axis, run inside one compiled step.

`map_members` applies a per-member function to stacked pytrees in one of three ways. They compute the
same thing and differ only in speed, which depends on the backend: `vmap` batches the members (XLA turns
a vmapped convolution into a grouped convolution), `unroll` writes m copies of the member's computation
into the program, and `scan` runs them one after another in a loop (smallest program, least
parallelism). `auto` picks per backend: unroll on CPU, vmap elsewhere.

Measured on our 2-core CPU (docs/performance.md, PreResNet-20, batch 128): in the distillation step
vmap is 1.6-1.8x slower than unroll for m = 3-5 teachers, scan about as fast as unroll (and quicker to
compile); in the teacher-training step scan is 30-50x slower (XLA:CPU's convolutions inside the loop
body lose their fast kernels), so never use it to train members on CPU. vmap for GPUs is the usual
choice, not yet a measurement: benchmarks/kd_step.py --method unroll vmap scan measures it.
"""

import jax
import jax.numpy as jnp

from kd_jax import config
from kd_jax.models import lenet

METHODS = config.ENSEMBLE_METHODS


def resolve_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"ensemble method {method!r} is not one of {METHODS}")
  if method == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return method


def num_members(stacked) -> int:
  return jax.tree.leaves(stacked)[0].shape[0]


def member(stacked, index: int):
  return jax.tree.map(lambda x: x[index], stacked)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def map_members(fn, *stacked, method: str = "auto"):
  """Returns fn applied to each member's slice of `stacked`, with results stacked on a new axis 0."""
  method = resolve_method(method)
  if method == "vmap":
    return jax.vmap(fn)(*stacked)
  if method == "scan":
    return jax.lax.map(lambda args: fn(*args), stacked)
  return stack([fn(*member(stacked, i)) for i in range(num_members(stacked))])


def member_logits(model, stacked_variables, x, method: str = "auto"):
  """(m, B, C): each stacked member's eval-mode logits on the same batch x.

  The members of an ensemble of LeNet-5s read the same input, so their first convolutions run as one
  convolution with m times the output channels (`lenet.members_first_conv`; a 1.1-1.8x faster forward
  on XLA:CPU, docs/performance.md), and each member continues from its slice. Other models run each
  member whole: a fused first layer measured slower for PreResNet's stem.
  """
  if isinstance(model, lenet.LeNet5):
    first = lenet.members_first_conv(stacked_variables["params"], x, model.dtype)
    return map_members(lambda v, y: model.apply(v, x, train=False, first_conv_output=y),
                       stacked_variables, first, method=method)
  return map_members(lambda v: model.apply(v, x, train=False), stacked_variables, method=method)
