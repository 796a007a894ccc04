"""What a run keeps in its workdir: config.json (its identity), metrics.jsonl, checkpoints, results.json.

A workdir belongs to one config: rerunning the same config resumes it, a different config is refused
before anything is written, and a folder kd_jax did not create is never written into.
"""

import json
import os
import time

import ml_collections

from kd_jax.errors import KdJaxError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
# Keys that change how a run reports or saves progress, not what it computes: they may differ on resume.
OPERATIONAL_KEYS = ("log_every_steps", "checkpoint_every_steps", "eval_batch_size")


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """{"distill": {"temperature": 4.0}} -> {"distill.temperature": 4.0}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _all_processes_checked() -> None:
  """Multi-process runs: every process inspects the workdir before process 0 writes into it."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("kd_jax workdir checked")


def _is_main_process() -> bool:
  # Imported here so that reading workdirs (kd_jax.report) does not pay for importing JAX.
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def config_differences(saved: dict, current: dict) -> list:
  saved, current = flatten_config(saved), flatten_config(current)
  keys = sorted((saved.keys() | current.keys()) - set(OPERATIONAL_KEYS))
  return [(k, saved.get(k, "<absent>"), current.get(k, "<absent>"))
          for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


def prepare(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Creates or reopens `workdir` for `config`; returns True when it resumes an earlier run."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  current = config_dict(config)
  resuming = os.path.exists(config_path)
  if resuming:
    with open(config_path) as f:
      saved = json.load(f)
    differences = config_differences(saved, current)
    if differences:
      key, old, new = differences[0]
      raise KdJaxError(
          f"workdir {workdir} holds a run of a different config ({key}: {old!r} there, {new!r} now; "
          f"{len(differences)} keys differ); use a new --workdir, or the same config to resume it.")
  elif os.path.isdir(workdir) and os.listdir(workdir):
    raise KdJaxError(f"workdir {workdir} is not empty and holds no kd_jax run (no {CONFIG_FILE}); "
                     "choose a new or empty --workdir.")
  _all_processes_checked()
  if _is_main_process():
    os.makedirs(workdir, exist_ok=True)
    with open(config_path, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)
  return resuming


class MetricsLog:
  """Appends one JSON object per logged step or evaluation to metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, METRICS_FILE)

  def write(self, record: dict) -> None:
    if not _is_main_process():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def write_results(workdir: str, results: dict) -> None:
  if _is_main_process():
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=2)
