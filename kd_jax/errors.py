"""The one error type kd_jax raises for problems the user can fix.

`run.py` prints its message as a single line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class KdJaxError(Exception):
  """Bad input: a config value, a missing dataset or checkpoint, a workdir that belongs to another run."""
