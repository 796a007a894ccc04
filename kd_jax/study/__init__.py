"""One study, resumable: `run(config, workdir)` validates the config once and runs it.

    config.study == "gan"          -> study/gan.py       (an SN-GAN whose samples serve as distillation data)
    data that stream from disk     -> study/streamed.py  (config.data.pipeline, kd_jax/data/stream.py)
    otherwise                      -> study/memory.py    (the whole dataset on the devices)

The drivers share the phases: study/phases.py (context, seeds, schedules, plan, `fit`),
study/teachers.py (the teacher store and its training), study/student.py (initialization and
distillation). docs/architecture.md follows one run from run.py to results.json.

A workdir that holds a finished run of the config (its results.json parses) is not run again: its
results are printed and returned, unless `force_evaluation` asks for the evaluation to run again.
"""

import json
import os

from kd_jax import config as config_lib
from kd_jax import results as results_lib
from kd_jax import workdir as workdir_lib
from kd_jax.data import stream as stream_lib
from kd_jax.study import gan, memory, streamed


def finished_results(config, workdir: str):
  """The results of the finished run of `config` in `workdir`, or None if there is none (reads only;
  a workdir of another config is refused, as workdir.check refuses it)."""
  if not workdir_lib.check(workdir, config):
    return None
  return workdir_lib.read_results(workdir)


def execute(config, workdir: str, force_evaluation: bool = False) -> dict:
  """Runs (or resumes) the study of an already validated `config` in `workdir`; returns its results.

  A finished run prints its results instead (module docstring).
  """
  results = None if force_evaluation else finished_results(config, workdir)
  if results is not None:
    print(f"workdir {os.path.abspath(workdir)} holds this run, finished; its results.json follows "
          "(rerun with --force_evaluation to evaluate it again)", flush=True)
    print(results_lib.results_table(results) if "student" in results else
          json.dumps(results, indent=2), flush=True)
    return results
  if config.study == "gan":
    return gan.run(config, workdir)
  if stream_lib.uses_streaming(config.data):
    return streamed.run(config, workdir)
  return memory.run(config, workdir)


def run(config, workdir: str, force_evaluation: bool = False) -> dict:
  """Validates `config` (one-line KdJaxError on bad values), then `execute`."""
  config_lib.validate(config)
  return execute(config, workdir, force_evaluation)
