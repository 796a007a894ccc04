"""Data parallelism: one 1-D device mesh, batches sharded over it, everything else replicated.

jax.jit over a Mesh with NamedSharding replaces pmap: the train step is written for the global batch and
XLA inserts the cross-device reductions (gradients, BatchNorm statistics), so 1 CPU, 8 GPUs and a TPU
slice run the same code and the same math. In a multi-process run (jax.distributed.initialize) every
process holds the whole (small) dataset, and `replicate` builds the global array from each process's
identical local copy.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.errors import KdJaxError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places host (NumPy) arrays on every device of the mesh, multi-process safe."""
  sharding = replicated_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(x, mesh: Mesh):
  """Inside jit: asks XLA to split the leading (batch) axis across the mesh's devices."""
  return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise KdJaxError(
        f"{what}={batch_size} is not divisible by the {devices} devices in use; "
        f"set it to a multiple of {devices}.")
