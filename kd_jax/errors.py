"""The exceptions kd_jax raises for outcomes a run reports in one line, and their exit statuses.

Every entry point (run.py, sweep.py, python -m kd_jax.report / reproduce / fid) prints the message as
a single line `error: ...` and exits with the status below (kd_jax/experiments/cli.py:
exit_statuses); anything else is a bug and keeps its traceback.
"""

USAGE_EXIT = 2  # bad input the user can fix
DIVERGED_EXIT = 3  # training produced a non-finite loss or parameter
INTERRUPTED_EXIT = 130  # Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention)


class KdJaxError(Exception):
  """Bad input: a config value, a missing dataset or checkpoint, a workdir that belongs to another run."""

  exit_status = USAGE_EXIT


class DivergedError(KdJaxError):
  """Training produced a non-finite loss, metric or parameter; the workdir records it in diverged.json."""

  exit_status = DIVERGED_EXIT


class Interrupted(BaseException):  # noqa: N818 (like KeyboardInterrupt, which it replaces)
  """A signal (Ctrl-C, SIGTERM) stopped the run; progress up to the last checkpoint is kept.

  A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
  """

  exit_status = INTERRUPTED_EXIT
