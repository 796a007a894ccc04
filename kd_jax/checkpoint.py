"""Orbax checkpoints: a CheckpointManager per training phase, plain variable checkpoints per teacher."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from kd_jax.errors import KdJaxError


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save_state(manager: ocp.CheckpointManager, step: int, state) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, template):
  """Returns (state, step) from the newest checkpoint, or (template, 0) when there is none."""
  step = manager.latest_step()
  if step is None:
    return template, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract)), step


def save_variables(path: str, variables) -> None:
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), variables)
  checkpointer.wait_until_finished()


def _shapes(tree):
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def load_variables(path: str, template):
  """Restores model variables saved by `save_variables`, checked against `template`'s shapes."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise KdJaxError(f"teacher checkpoint {path} does not exist; point config.teacher.load_from "
                     "at the workdir of a finished teacher run.")
  restored = ocp.StandardCheckpointer().restore(path)
  expected, found = _shapes(template), _shapes(restored)
  if expected != found:
    differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    key = differing[0]
    raise KdJaxError(
        f"teacher checkpoint {path} does not fit config.teacher.model: {key} has shape "
        f"{found.get(key, 'missing')} in the checkpoint, {expected.get(key, 'missing')} in the model "
        f"({len(differing)} mismatches); set config.teacher.model to the architecture it was trained with.")
  return jax.tree.map(lambda t, r: np.asarray(r, dtype=np.asarray(t).dtype), template, restored)
