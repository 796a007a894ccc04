"""One study, resumable: `run(config, workdir)` validates the config once and runs it.

    config.study == "gan"          -> study/gan.py       (an SN-GAN whose samples serve as distillation data)
    data that stream from disk     -> study/streamed.py  (config.data.pipeline, kd_jax/data/stream.py)
    otherwise                      -> study/memory.py    (the whole dataset on the devices)

The drivers share the phases: study/phases.py (context, seeds, schedules, plan, `fit`),
study/teachers.py (the teacher store and its training), study/student.py (initialization and
distillation). docs/architecture.md follows one run from run.py to results.json.
"""

from kd_jax import config as config_lib
from kd_jax.data import stream as stream_lib
from kd_jax.study import gan, memory, streamed


def execute(config, workdir: str) -> dict:
  """Runs (or resumes) the study of an already validated `config` in `workdir`; returns its results."""
  if config.study == "gan":
    return gan.run(config, workdir)
  if stream_lib.uses_streaming(config.data):
    return streamed.run(config, workdir)
  return memory.run(config, workdir)


def run(config, workdir: str) -> dict:
  """Validates `config` (one-line KdJaxError on bad values), then `execute`."""
  config_lib.validate(config)
  return execute(config, workdir)
