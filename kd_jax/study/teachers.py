"""The teacher ensemble: its store in the workdir, its training over any batch source, and loading.

Store layout (what --config.teacher.load_from reads):

    <workdir>/teachers/member_<i>/        member i's variables (Orbax, kd_jax.checkpoint.save_variables)
    <workdir>/teachers/train_<a>-<b>/     resumable training state of the group of members a..b

Members of a group train together in one compiled step (stacked, kd_jax/ensemble.py), each on its own
key (seed stream TEACHERS, member index), so each is trained exactly as if alone. Where the batches
come from is the `batches` object's business (study/memory.py's on-device draw, study/streamed.py's
host feed): it restores a group's state, binds the step to its data, and closes.
"""

import os
import sys

import jax
import numpy as np

from kd_jax import checkpoint, loop, parallel, runtime, train
from kd_jax.errors import KdJaxError
from kd_jax.study import phases


def member_dir(teachers_dir: str, index: int) -> str:
  return os.path.join(teachers_dir, f"member_{index}")


def variables_template(model, image_shape):
  """Zero variables shaped like `model`'s on one example of `image_shape` (a restore target)."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), train.dummy_input(model, image_shape), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)


def members_init_fn(ctx: phases.Context, model, tx):
  """Compiled init of a group of members from their keys (vmap: it runs once, speed is moot)."""
  return jax.jit(
      lambda keys: jax.vmap(lambda rng: train.create_state(model, tx, rng, ctx.image_shape))(keys),
      out_shardings=parallel.replicated_sharding(ctx.mesh))


def teacher_optimizer(config, num_examples: int):
  """(optimizer, total steps, steps per epoch) of teacher training on `num_examples` images."""
  cfg = config.teacher
  total, steps_per_epoch = phases.schedule_length(cfg, num_examples, "teacher")
  return train.make_optimizer(cfg.optimizer, total, steps_per_epoch), total, steps_per_epoch


def initial_members(ctx: phases.Context, model, members, teachers_key, num_examples: int):
  """The stacked fresh training states of `members`, keyed (teachers_key, member index)."""
  tx, _, _ = teacher_optimizer(ctx.config, num_examples)
  return members_init_fn(ctx, model, tx)(
      np.stack([jax.random.fold_in(teachers_key, i) for i in members]))


def train_teachers(ctx: phases.Context, model, teachers_dir: str, teachers_key, batches,
                   label: str = "teachers") -> None:
  """Trains the members not yet saved in teachers_dir, k per compiled step, on `batches`."""
  cfg = ctx.config.teacher
  tx, total, steps_per_epoch = teacher_optimizer(ctx.config, batches.num_examples)
  step_fn = train.make_supervised_step(
      model, tx, batch_size=cfg.batch_size, augment=phases.teacher_policy(ctx.config),
      mesh=ctx.mesh, compute_dtype=ctx.compute_dtype, method=ctx.config.ensemble_method,
      streamed=batches.streamed)
  init_members = members_init_fn(ctx, model, tx)
  for members in phases.teacher_groups(ctx.config):
    if all(os.path.isdir(member_dir(teachers_dir, i)) for i in members):
      continue
    name = phases.teacher_group_name(label, members, cfg.ensemble_size)
    manager = checkpoint.make_manager(
        os.path.join(teachers_dir, f"train_{members[0]}-{members[-1]}"))
    fresh = init_members(np.stack([jax.random.fold_in(teachers_key, i) for i in members]))
    state, start = batches.restore(manager, fresh, name, total, members=members)
    phase = loop.Phase(name=name, total=total, steps_per_epoch=steps_per_epoch,
                       images_per_step=cfg.batch_size * len(members), log_fields={"members": members},
                       learning_rate=train.learning_rate_schedule(cfg.optimizer, total, steps_per_epoch),
                       hint="config.teacher.optimizer.learning_rate")
    state = phases.fit(ctx, batches.bind(step_fn), state, phase, manager, start, batches)
    trained = jax.device_get(train.model_variables(state))
    with runtime.deferred_signals():  # a member's save completes before a signal stops the run
      for position, index in enumerate(members):
        checkpoint.save_variables(member_dir(teachers_dir, index),
                                  jax.tree.map(lambda x: x[position], trained))
    runtime.raise_if_stopped()


def load_teachers(model, teachers_dir: str, ensemble_size: int, image_shape, mesh):
  """Loads members 0..m-1 from `teachers_dir` (or a workdir holding teachers/) as stacked variables."""
  if os.path.isdir(os.path.join(teachers_dir, "teachers")):
    teachers_dir = os.path.join(teachers_dir, "teachers")
  template = variables_template(model, image_shape)
  members = [checkpoint.load_variables(member_dir(teachers_dir, i), template)
             for i in range(ensemble_size)]
  return parallel.replicate(jax.tree.map(lambda *xs: np.stack(xs), *members), mesh)


def trained_teachers(ctx: phases.Context, model, teachers_dir: str, teachers_key, batches,
                     label: str = "teachers"):
  """Trains (or finishes training) the ensemble in teachers_dir and loads it as stacked variables.

  A member checkpoint that cannot be read is moved aside (one warning line) and written again from its
  group's last training checkpoint by the next round of training.
  """
  for _ in range(ctx.config.teacher.ensemble_size + 1):
    train_teachers(ctx, model, teachers_dir, teachers_key, batches, label)
    try:
      return load_teachers(model, teachers_dir, ctx.config.teacher.ensemble_size, ctx.image_shape,
                           ctx.mesh)
    except checkpoint.UnreadableCheckpoint as e:
      moved = checkpoint.move_aside(e.path)
      print(f"warning: {e} Moved aside to {os.path.basename(moved)}; saving it again from its "
            "group's training checkpoint", file=sys.stderr, flush=True)
  raise KdJaxError(f"the teacher checkpoints in {teachers_dir} stay unreadable; delete the folder "
                   "to train the teachers again.")
