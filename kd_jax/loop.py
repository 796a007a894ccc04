"""The training loop shared by every phase: steps, progress lines, metrics, checkpoints, and stopping.

    state = loop.fit(step_fn, state, phase=Phase(...), manager=manager, start=start, log=log,
                     settings=Settings(...))

`step_fn(state) -> (state, metrics)` is a compiled step with everything else it reads already bound
(functools.partial at the call site says what a step receives). The loop:
- keeps at most `settings.max_steps_ahead` steps in flight: the host blocks on the metrics of the step that many
  steps back. Unbounded run-ahead queued so many steps on forced multi-device CPU runs that XLA's
  all-reduce rendezvous timed out; a few steps in flight keep an accelerator busy all the same;
- checks every step's metrics as they arrive (loss, metrics and the parameter norm): the first
  non-finite value stops the phase with DivergedError, and since checkpoints are saved only after the
  steps before them were checked, every checkpoint on disk holds finite parameters;
- logs the mean of each metric over the steps since the last log line (plus the learning rate);
  each progress line shows the phase's ETA and, given the study's plan (kd_jax/study_plan.py),
  the whole study's;
- saves a checkpoint every `checkpoint_every` steps and at the end; a failed save stops the run;
- optionally evaluates every `phase.evaluate_every` steps (test accuracy and agreement curves);
- optionally traces `profile_steps` steps after the first (compiling) one with jax.profiler;
- between steps, honours a stop signal (kd_jax/runtime.py): it saves a checkpoint, prints one line
  and raises Interrupted.

Several processes (JAX's multi-process runtime): a signal may reach one process only, and all must
stop at the same step (each step and each checkpoint save is a collective). Every
`STOP_VOTE_EVERY` steps the loop starts a vote of all processes (`runtime.stop_vote`) right after
the step, and reads it with that step's metrics, when the run-ahead bound or a log line or save
fetches them anyway: no extra wait for the host. Every process starts and reads the same votes at
the same steps, so when one says "stop", all save the same step and raise Interrupted; the signal
is honoured at most STOP_VOTE_EVERY + max_steps_ahead steps after it arrived. A vote every step
would cost each step a small dispatch and collective (noticeable next to a millisecond step); every
few steps keeps that under the noise. One process runs no votes: it reads its own flag before each
step, as before.
"""

import dataclasses
import time
from typing import Callable, Optional

import jax
import numpy as np

from kd_jax import checkpoint, progress, runtime
from kd_jax.errors import DivergedError, Interrupted
from kd_jax.study_plan import StudyPlan

# Steps the host may dispatch before it waits for the oldest one (see the module docstring).
MAX_STEPS_AHEAD = 4
# Multi-process runs: steps between two votes on stopping (see the module docstring).
STOP_VOTE_EVERY = 4
# Between log lines, a short progress line (no metrics) every progress.PROGRESS_SECONDS, so that a
# phase whose log_every_steps is far away still shows that it runs and when it will end.


@dataclasses.dataclass
class Phase:
  """One training phase as the loop reports it."""
  name: str  # in progress lines, e.g. "teachers 1-3/3" or "student"
  total: int  # steps of the whole phase
  steps_per_epoch: int
  images_per_step: int
  log_fields: dict = dataclasses.field(default_factory=dict)  # added to each metrics.jsonl record
  learning_rate: Optional[Callable] = None  # the optax schedule, logged as "lr"
  hint: str = ""  # what to change when the phase diverges, e.g. "config.student.optimizer.learning_rate"
  # Optional evaluation during training: evaluate(state) -> {name: float}, every `evaluate_every` steps
  # (and at the end), printed and logged as a record with "evaluation": true.
  evaluate: Optional[Callable] = None
  evaluate_every: int = 0
  profile_dir: str = ""  # where a jax.profiler trace of `profile_steps` steps goes (TensorBoard's
  # profile plugin reads it)
  # Streamed input (kd_jax/study/streamed.py): step -> the data iterator's position after that many steps,
  # saved in the same checkpoint as the state (the host reads batches ahead of the steps it saves).
  data_position: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a run logs, checkpoints and profiles its phases (config.log_every_steps,
  config.checkpoint_every_steps, config.profile_steps)."""
  log_every: int
  checkpoint_every: int
  profile_steps: int = 0
  max_steps_ahead: int = MAX_STEPS_AHEAD


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def _non_finite(metrics: dict) -> Optional[str]:
  """The first metric of a fetched step that is not finite, as 'name value', or None."""
  for key, value in metrics.items():
    values = np.asarray(value, dtype=np.float64)
    if not np.isfinite(values).all():
      return f"{key} {values.ravel()[~np.isfinite(values.ravel())][0]}"
  return None


class _Window:
  """Fetched step metrics since the last log line, and the timing of that window."""

  def __init__(self, step: int):
    self.start_time, self.start_step, self.metrics = time.time(), step, []

  def means(self) -> dict:
    return {k: float(np.mean([np.mean(m[k]) for m in self.metrics])) for k in self.metrics[0]}


def fit(step_fn: Callable, state, *, phase: Phase, manager, start: int, log, settings: Settings,
        study: Optional[StudyPlan] = None):
  """Runs step_fn from step `start` to `phase.total` (see the module docstring); returns the state.

  `study`, the plan of the study this phase belongs to, adds the study's ETA to progress lines.
  The loop is one function, longer than most here, so that what happens between two steps reads top
  to bottom in one place; its closures are the parts (check, save, log a line).
  """
  log_every, checkpoint_every = settings.log_every, settings.checkpoint_every
  profile_steps, max_steps_ahead = settings.profile_steps, settings.max_steps_ahead
  step = start
  saved_step = start if start else None  # the checkpoint on disk that `state` was restored from
  in_flight = []  # (step number, metrics on device, stop vote on device or None), oldest first
  votes = runtime.multiprocess()  # several processes decide together when to stop
  voted_stop = False  # a vote said that a signal reached some process
  profile_until = None  # the step that ends a running profiler trace
  last_progress = time.time()
  window = _Window(start)

  def check(keep: int) -> None:
    """Fetches and checks the metrics (and reads the votes) of all but the newest `keep` steps in
    flight."""
    nonlocal voted_stop
    while len(in_flight) > keep:
      number, metrics, vote = in_flight.pop(0)
      fetched = jax.device_get(metrics)
      if vote is not None and runtime.stop_agreed(vote):
        voted_stop = True
      bad = _non_finite(fetched)
      if bad is not None:
        last = f"step {saved_step}" if saved_step else "none (the phase restarts)"
        raise DivergedError(
            f"[{phase.name}] diverged at step {number}/{phase.total}: {bad}. Training stopped; the "
            f"last checkpoint, which resumes, is {last}. "
            f"{f'Lower {phase.hint} or ' if phase.hint else ''}check the data and config.")
      window.metrics.append(fetched)

  def save() -> None:
    nonlocal saved_step
    check(keep=0)  # only a state whose steps were all checked is saved
    if saved_step != step and step > 0:
      position = phase.data_position(step) if phase.data_position is not None else None
      checkpoint.save_state(manager, step, state, data_position=position)
      saved_step = step

  def study_eta(step: int, rate: float) -> str:
    """' | study ETA ...' at `rate` steps/s, or '' without a plan."""
    if study is None:
      return ""
    seconds = study.remaining_seconds(phase.name, step, rate * phase.images_per_step)
    return f" | study ETA {format_duration(seconds) if seconds is not None else '?'}"

  def log_line() -> None:
    nonlocal window
    values = window.means()
    if phase.learning_rate is not None:
      # The rate the last step used: the schedule is evaluated at the optimizer's count before it.
      values["lr"] = float(phase.learning_rate(step - 1))
    elapsed = time.time() - window.start_time
    rate = (step - window.start_step) / elapsed if elapsed > 0 and step > window.start_step else 0.0
    eta = (phase.total - step) / rate if rate > 0 else 0.0
    shown = " ".join(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}" for k, v in values.items())
    print(f"[{phase.name}] step {step}/{phase.total} epoch {step / phase.steps_per_epoch:.2f} | "
          f"{shown} | {rate * phase.images_per_step:.0f} img/s | ETA {format_duration(eta)}"
          f"{study_eta(step, rate)}",
          flush=True)
    log.write({"phase": phase.name, **phase.log_fields, "step": step,
               "epoch": round(step / phase.steps_per_epoch, 4), **values,
               "images_per_second": round(rate * phase.images_per_step, 1)})
    window = _Window(step)

  def stopping() -> bool:
    return voted_stop if votes else runtime.stop_requested()

  with runtime.deferred_signals():
    while step < phase.total:
      if stopping():
        _stop(phase, step, save)
      state, metrics = step_fn(state)
      step += 1
      vote = runtime.stop_vote() if votes and step % STOP_VOTE_EVERY == 0 else None
      in_flight.append((step, metrics, vote))
      if step == start + 1:
        check(keep=0)
        compile_s = time.time() - window.start_time
        print(f"[{phase.name}] first step (including compilation) took {compile_s:.1f}s", flush=True)
        log.write({"phase": phase.name, **phase.log_fields, "step": step,
                   "compile_s": round(compile_s, 2)})
        # The throughput of the window excludes compilation; its metric means include the step.
        window.start_time, window.start_step = time.time(), step
        if profile_steps and phase.profile_dir:
          jax.profiler.start_trace(phase.profile_dir)
          profile_until = step + profile_steps
      if profile_until is not None and step >= min(profile_until, phase.total):
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profile_until = None
        print(f"[{phase.name}] profiler trace of {profile_steps} steps written to "
              f"{phase.profile_dir}", flush=True)
      check(keep=max_steps_ahead)
      if step % log_every == 0 or step == phase.total:
        check(keep=0)
        log_line()
        last_progress = time.time()
      elif time.time() - last_progress > progress.PROGRESS_SECONDS:
        last_progress = time.time()
        elapsed = last_progress - window.start_time
        rate = (step - window.start_step) / elapsed if elapsed > 0 else 0.0
        eta = format_duration((phase.total - step) / rate) if rate > 0 else "?"
        print(f"[{phase.name}] step {step}/{phase.total} | {rate * phase.images_per_step:.0f} img/s "
              f"| ETA {eta}{study_eta(step, rate)}", flush=True)
      if phase.evaluate is not None and phase.evaluate_every and (
          step % phase.evaluate_every == 0 or step == phase.total):
        check(keep=0)
        values = {k: float(v) for k, v in phase.evaluate(state).items()}
        print(f"[{phase.name}] step {step}/{phase.total} evaluation | " +
              " ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
        log.write({"phase": phase.name, **phase.log_fields, "step": step,
                   "epoch": round(step / phase.steps_per_epoch, 4), "evaluation": True, **values})
      if step % checkpoint_every == 0 or step == phase.total:
        save()
    if votes and not voted_stop:
      voted_stop = runtime.stop_agreed(runtime.stop_vote())  # once per phase: a wait is cheap
    if stopping():
      # The signal came during the last steps or the final save: the phase is complete and saved.
      _stop(phase, step, save)
  return state


def _stop(phase: Phase, step: int, save: Callable) -> None:
  """Saves the state at `step`, prints one line and raises Interrupted."""
  save()
  print(f"[{phase.name}] stopped at step {step}/{phase.total} by a signal; checkpoint saved",
        flush=True)
  raise Interrupted(f"{phase.name} at step {step}")
