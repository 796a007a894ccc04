"""Stacked ensembles: m sets of parameters with a leading member axis, run inside one compiled step.

`map_members` applies a per-member function to stacked pytrees in one of three ways. They compute the
same thing and differ only in speed, which depends on the backend: `vmap` batches the members (XLA turns
a vmapped convolution into a grouped convolution: fast on GPUs, about 4x slower than unrolling on our
2-core CPU), `unroll` writes m copies of the member's computation into the program, and `scan` runs them
one after another in a loop (smallest program, least parallelism). `auto` picks per backend.
"""

import jax
import jax.numpy as jnp

METHODS = ("auto", "vmap", "unroll", "scan")


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
