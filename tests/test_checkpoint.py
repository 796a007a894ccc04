"""kd_jax/checkpoint.py: a damaged newest checkpoint falls back to the previous one; none readable is
one error."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import KdJaxError, checkpoint, train


def _damage(step_dir, kind):
  item = os.path.join(step_dir, "default")
  if kind == "truncated_data":
    for root, _, names in os.walk(item):
      for name in names:
        if f"{os.sep}d" in root:
          path = os.path.join(root, name)
          os.truncate(path, os.path.getsize(path) // 2)
  elif kind == "no_metadata":
    os.remove(os.path.join(item, "_METADATA"))
  elif kind == "empty_manifest":
    open(os.path.join(item, "manifest.ocdbt"), "w").close()
  elif kind == "no_item":
    shutil.rmtree(item)


@pytest.mark.parametrize("kind", ["truncated_data", "no_metadata", "empty_manifest", "no_item"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, kind):
  state = {"w": jnp.arange(3.0), "b": {"c": jnp.ones(2)}}
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save_state(manager, 1, state)
  checkpoint.save_state(manager, 2, jax.tree.map(lambda x: x + 1, state))
  manager.close()
  _damage(str(tmp_path / "2"), kind)
  manager = checkpoint.make_manager(tmp_path)
  restored, step = checkpoint.restore_latest(manager, state)
  # A checkpoint that still restores (a missing _METADATA is not needed) must restore exactly.
  expected = state if step == 1 else jax.tree.map(lambda x: x + 1, state)
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  err = capsys.readouterr().err
  if step == 1:
    assert len(err.strip().splitlines()) == 1 and "resuming from step 1" in err
    assert (tmp_path / "2.unreadable").is_dir()
    # The manager goes on saving where it fell back to.
    checkpoint.save_state(manager, 2, state)
    assert manager.all_steps() == [1, 2]
  manager.close()


def test_no_readable_checkpoint_is_one_error(tmp_path):
  state = {"w": jnp.arange(3.0)}
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save_state(manager, 1, state)
  manager.close()
  _damage(str(tmp_path / "1"), "empty_manifest")
  with pytest.raises(KdJaxError, match=r"no readable checkpoint in .*delete"):
    checkpoint.restore_latest(checkpoint.make_manager(tmp_path), state)


def test_a_state_written_before_the_method_fields_restores_them_empty(tmp_path):
  """A checkpoint of the five fields TrainState had before a distillation method's parameters and
  state joined it restores into today's TrainState, with those fields {}."""
  tx = optax.sgd(0.1, momentum=0.9)
  params = {"w": jnp.arange(3.0)}
  old = {"step": jnp.int32(7), "params": params, "batch_stats": {}, "opt_state": tx.init(params),
         "rng": jnp.array([1, 2], jnp.uint32)}
  checkpoint.save_state(checkpoint.make_manager(str(tmp_path)), 7, old)
  template = train.TrainState(step=jnp.int32(0), params={"w": jnp.zeros(3)}, batch_stats={},
                              opt_state=tx.init(params), rng=jnp.zeros(2, jnp.uint32))
  state, step = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path)), template)
  assert step == 7 and int(state.step) == 7
  np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
  assert state.method_params == state.method_opt_state == state.method_state == {}
