"""Exports a run's trained student (and on request its teacher ensemble) as self-contained programs.

  python -m kd_jax.export --workdir=runs/x --out=student.export [--teachers]
  python -m kd_jax.predict --model=student.export IMAGES...

The artifact (kd_jax/artifact.py describes its files) holds each network as a jax.export program:
serialized StableHLO with the trained variables and the run's input standardization baked in, so it
runs without kd_jax's model code, on any of `--platforms` (by default every platform jax.export
lowers for: cpu, cuda, rocm, tpu). Its batch axis is symbolic (jax.export.symbolic_shape), so one
program takes any batch size. The student is the newest checkpoint of the workdir's student/ (the
final training state, once results.json says the run finished), in eval mode (BatchNorm running
statistics), computing in the run's precision, exactly as the run's evaluation did; the ensemble's
members come from teachers/ (or config.teacher.load_from) and the program returns the log of their
mean softmax probabilities, the distillation target.

Standardization: (x / 255 - mean) / std per channel, with the run's channel statistics of its
training images. They are read from the workdir's normalization.json where the run wrote one, else
computed again from the config's dataset exactly as the run computed them (a streamed run's need the
file). An export checks that the program it wrote gives the model's logits on a few inputs before it
reports success.
"""

import argparse
import dataclasses
import importlib.metadata
import os
import sys
import tomllib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import artifact, checkpoint, ensemble, files, losses, parallel, train
from kd_jax.data import placement
from kd_jax.experiments import cli
from kd_jax.study import teachers as study_teachers
from kd_jax import workdir as workdir_lib
from kd_jax.data import augment as augment_lib
from kd_jax.data import load_dataset
from kd_jax.data import stream as stream_lib
from kd_jax.data import text as text_lib
from kd_jax.errors import KdJaxError
from kd_jax.models import build_model, param_count

DEFAULT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# Inputs of the check that an exported program computes what the model does.
_CHECK_EXAMPLES = 4
# Relative to the largest logit (at least 1), by config.precision: bfloat16 keeps 8 bits.
_CHECK_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}

# Class names of datasets that do not carry them, by data.name.
_DIGITS = tuple(str(i) for i in range(10))
KNOWN_CLASSES = {
    "digits": _DIGITS, "mnist": _DIGITS, "svhn_cropped": _DIGITS,
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "imdb_reviews": ("neg", "pos"),
}


@dataclasses.dataclass(frozen=True)
class RunInputs:
  """What a run's models read: the channel statistics they were standardized with and the shape of
  one example, as normalization.json records them (kd_jax.artifact.normalization_record)."""
  record: dict
  vocabulary: tuple = ()  # text runs: the tokens of ids text.FIRST_WORD_ID, ...
  statistics_source: str = ""  # where the statistics came from, for export.json

  @property
  def is_text(self) -> bool:
    return self.record["input_dtype"] != "uint8"

  @property
  def mean_std(self) -> tuple:
    """The float32 (mean, std) the run's augment.normalize standardized with."""
    return placement.standardization(np.asarray(self.record["mean"]), np.asarray(self.record["std"]))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    raise KdJaxError(f"{workdir} is not a kd_jax run (no {workdir_lib.CONFIG_FILE}); give the "
                     "--workdir of a finished run.py run.")
  return ml_collections.ConfigDict(workdir_lib.read_json(path, "the run's config"))


def run_inputs(config, workdir: str) -> RunInputs:
  """The run's RunInputs: its normalization.json, or computed from config.data's dataset as the run
  (placement.channel_statistics over every training image) did."""
  record = artifact.read_normalization(workdir)
  is_text = config.data.source in text_lib.SOURCES
  if record is not None and not is_text:
    return RunInputs(record, statistics_source=artifact.NORMALIZATION_FILE)
  if record is None and stream_lib.uses_streaming(config.data):
    raise KdJaxError(f"{workdir} is a streamed run without {artifact.NORMALIZATION_FILE}: its "
                     "normalization statistics cannot be recomputed here; rerun it with a kd_jax "
                     f"that writes {artifact.NORMALIZATION_FILE}.")
  dataset = load_dataset(config.data)
  if record is None:
    mean, std = placement.channel_statistics(dataset.train_images)
    record = artifact.normalization_record(
        mean, std, dataset.train_images.shape[1:], str(dataset.train_images.dtype),
        dataset.num_classes, getattr(dataset, "num_tokens", 0))
  return RunInputs(record, vocabulary=tuple(getattr(dataset, "vocabulary", ())),
                   statistics_source="the training images of config.data (recomputed)")


def _variables_template(model, input_shape):
  """Zeros shaped as `model`'s inference variables (params, batch_stats if any)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), train.dummy_input(model, input_shape), train=False))
  return {k: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v) for k, v in shapes.items()
          if k in ("params", "batch_stats") and v}


def compute_dtype(config):
  return jnp.bfloat16 if config.precision == "bf16" else jnp.float32


def student_forward(config, workdir: str, inputs: RunInputs) -> tuple:
  """(forward(x) -> logits with the variables and standardization baked in, params, step) of the
  workdir's trained student."""
  dtype = compute_dtype(config)
  record = inputs.record
  model = build_model(config.student.model, record["num_classes"], dtype, record["num_tokens"])
  variables, step = checkpoint.load_final_variables(
      os.path.join(workdir, "student"), _variables_template(model, record["input_shape"]))
  mean, std = inputs.mean_std

  def forward(x):
    return model.apply(variables, augment_lib.normalize(x, mean, std, dtype), train=False)

  return forward, param_count(variables["params"]), step


def ensemble_forward(config, workdir: str, inputs: RunInputs) -> tuple:
  """(forward(x) -> the ensemble's log mean softmax, params of all members, None) of the run's
  teachers."""
  dtype = compute_dtype(config)
  record = inputs.record
  model = build_model(config.teacher.model, record["num_classes"], dtype, record["num_tokens"])
  teachers = config.teacher.load_from or workdir
  stacked = jax.device_get(study_teachers.load_teachers(
      model, teachers, config.teacher.ensemble_size, tuple(record["input_shape"]),
      parallel.make_mesh(jax.local_devices()[:1])))
  mean, std = inputs.mean_std

  def forward(x):
    x = augment_lib.normalize(x, mean, std, dtype)
    member_logits = ensemble.member_logits(model, stacked, x, config.ensemble_method)
    return losses.ensemble_log_probs(member_logits)

  return forward, param_count(stacked["params"]), None


def example_inputs(record: dict, count: int) -> np.ndarray:
  """A seeded batch as the programs take it: [0, 255] float32 images or int32 token ids."""
  rng = np.random.default_rng(0)
  shape = (count, *record["input_shape"])
  if record["input_dtype"] == "uint8":
    return rng.uniform(0, 255, shape).astype(np.float32)
  return rng.integers(0, max(record["num_tokens"], 1), shape).astype(np.int32)


def export_forward(forward, record: dict, platforms) -> tuple:
  """(jax.export.Exported, fixed batch size or None): `forward` with a symbolic batch axis, or with
  batch 1 for a model that cannot take one."""
  dtype = np.float32 if record["input_dtype"] == "uint8" else np.int32
  shape = tuple(record["input_shape"])
  batch, = jax.export.symbolic_shape("b")
  exporter = jax.export.export(jax.jit(forward), platforms=tuple(platforms))
  try:
    return exporter(jax.ShapeDtypeStruct((batch, *shape), dtype)), None
  except Exception as symbolic_error:  # pylint: disable=broad-except (shape errors vary by model)
    try:
      return exporter(jax.ShapeDtypeStruct((1, *shape), dtype)), 1
    except Exception:  # pylint: disable=broad-except
      raise symbolic_error from None


def check_exported(exported, forward, record: dict, batch_size, tolerance: float) -> None:
  """Raises KdJaxError unless `exported` gives `forward`'s outputs on a few seeded inputs (on this
  backend, when it is one of the program's platforms)."""
  if jax.default_backend() not in exported.platforms:
    return
  x = example_inputs(record, batch_size or _CHECK_EXAMPLES)
  expected = np.asarray(jax.jit(forward)(x))
  found = np.asarray(exported.call(x))
  scale = max(1.0, float(np.abs(expected).max()))
  difference = float(np.abs(found - expected).max())
  if not difference <= tolerance * scale:
    raise KdJaxError(f"the exported program's outputs differ from the model's by {difference:.3g} "
                     f"(largest logit {scale:.3g}); the export is not usable.")


def class_names(data_config, num_classes: int):
  """The names of the classes in label order where known (a dataset of KNOWN_CLASSES, an image
  folder's class folders, a tfds dataset's label names), else None."""
  names = KNOWN_CLASSES.get(data_config.name)
  if names is None and data_config.source == "image_folder" and os.path.isdir(
      os.path.join(data_config.path, data_config.train_split)):
    split = os.path.join(data_config.path, data_config.train_split)
    names = sorted(name for name in os.listdir(split)
                   if os.path.isdir(os.path.join(split, name)) and not name.startswith("."))
  if names is None and data_config.source == "tfds":
    try:
      from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
      names = sources.prepared_tfds_builder(data_config.name, data_config.data_dir).info.features[
          "label"].names
    except Exception:  # pylint: disable=broad-except (names are optional)
      names = None
  return list(names) if names is not None and len(names) == num_classes else None


def kd_jax_version():
  """The installed kd_jax's version, or a source checkout's (its pyproject.toml), or None."""
  try:
    return importlib.metadata.version("kd_jax")
  except importlib.metadata.PackageNotFoundError:
    pass
  try:
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(checkout, "pyproject.toml"), "rb") as f:
      return tomllib.load(f)["project"]["version"]
  except (OSError, KeyError, tomllib.TOMLDecodeError):
    return None


def config_summary(config) -> dict:
  return {
      "dataset": config.data.name, "data_source": config.data.source,
      "image_size": config.data.image_size, "precision": config.precision, "seed": config.seed,
      "teacher_model": config.teacher.model.to_dict(),
      "ensemble_size": config.teacher.ensemble_size,
      "student_model": config.student.model.to_dict(),
      "distill": {k: config.distill[k] for k in ("temperature", "alpha", "loss", "augment")},
  }


def _run_results(workdir: str):
  """The run's headline test results from results.json, or None before it finished."""
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if not os.path.isfile(path):
    return None
  results = workdir_lib.read_json(path, "the run's results")
  return {f"{role}_test_{key}": results.get(role, {}).get(f"test_{key}")
          for role, key in (("student", "accuracy"), ("student", "agreement"),
                            ("ensemble", "accuracy"))}


def _prepare_out(out: str) -> None:
  """Creates `out`, or reuses it when it is an earlier export; another existing path is refused."""
  if os.path.exists(out) and not (os.path.isdir(out) and (
      not os.listdir(out) or os.path.isfile(os.path.join(out, artifact.ARTIFACT_FILE)))):
    raise KdJaxError(f"--out={out} exists and is not an earlier export; give a new folder.")
  os.makedirs(out, exist_ok=True)


def _write_bytes(path: str, data: bytes) -> None:
  with files.atomic_path(path) as temporary:
    with open(temporary, "wb") as f:
      f.write(data)


def export_metadata(config, inputs, models: dict, batch_sizes: set, platforms, source: dict) -> dict:
  """export.json's content: the programs, their inputs and normalization, classes, provenance."""
  record = inputs.record
  mean, std = inputs.mean_std
  metadata = {
      "format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION,
      "models": models,
      "input": {"kind": "tokens" if inputs.is_text else "image", "shape": record["input_shape"],
                "dtype": "int32" if inputs.is_text else "float32",
                "value_range": None if inputs.is_text else [0, 255],
                "layout": "NL" if inputs.is_text else "NHWC",
                "batch_size": max(batch_sizes - {None}, default=None),
                "preprocess": None if inputs.is_text else {
                    "color": "L" if record["input_shape"][-1] == 1 else "RGB",
                    "resize": "center_crop" if record.get("center_crop") else "bilinear",
                    "center_crop": record.get("center_crop")}},
      "normalization": None if inputs.is_text else {
          "mean": [float(x) for x in mean], "std": [float(x) for x in std],
          "formula": "(x / 255 - mean) / std per channel, inside the programs",
          "statistics": inputs.statistics_source},
      "classes": class_names(config.data, record["num_classes"]),
      "num_classes": record["num_classes"],
      "text": None if not inputs.is_text else {
          "tokenizer": "basic_english", "vocabulary_file": artifact.VOCABULARY_FILE,
          "sequence_length": record["input_shape"][0], "pad_id": text_lib.PAD_ID,
          "oov_id": text_lib.OOV_ID, "first_word_id": text_lib.FIRST_WORD_ID},
      "platforms": list(platforms),
      "source": {"kd_jax_version": kd_jax_version(), "jax_version": jax.__version__,
                 "workdir": source["workdir"], "student_step": source["student_step"],
                 "config": config_summary(config), "results": source["results"]},
  }
  return metadata


def export_workdir(workdir: str, out: str, *, teachers: bool = False,
                   platforms=DEFAULT_PLATFORMS, allow_unfinished: bool = False) -> dict:
  """Writes the artifact of `workdir`'s student (and ensemble) to the folder `out`; returns its
  export.json content."""
  workdir, out = os.path.abspath(workdir), os.path.abspath(out)
  config = read_config(workdir)
  results = _run_results(workdir)
  if results is None and not allow_unfinished:
    raise KdJaxError(f"{workdir} has no {workdir_lib.RESULTS_FILE}: the run has not finished, so "
                     "its newest student checkpoint may not be the trained student; finish the run, "
                     "or pass --allow_unfinished to export that checkpoint.")
  unknown = sorted(set(platforms) - set(DEFAULT_PLATFORMS))
  if unknown or not platforms:
    raise KdJaxError(f"--platforms={','.join(platforms)}: choose from "
                     f"{','.join(DEFAULT_PLATFORMS)}.")
  inputs = run_inputs(config, workdir)
  record = inputs.record
  builders = [("student", student_forward)] + ([("ensemble", ensemble_forward)] if teachers else [])
  _prepare_out(out)
  models, batch_sizes, student_step = {}, set(), None
  for role, build in builders:
    forward, params, step = build(config, workdir, inputs)
    exported, batch_size = export_forward(forward, record, platforms)
    check_exported(exported, forward, record, batch_size, _CHECK_TOLERANCE[config.precision])
    _write_bytes(os.path.join(out, artifact.program_file(role)), bytes(exported.serialize()))
    models[role] = {"file": artifact.program_file(role),
                    "output": "logits" if role == "student" else "log mean softmax of the members",
                    "params": params}
    batch_sizes.add(batch_size)
    student_step = step if role == "student" else student_step
  metadata = export_metadata(config, inputs, models, batch_sizes, platforms,
                             source={"workdir": workdir, "student_step": student_step,
                                     "results": results})
  for role in set(artifact.ROLES) - set(models):  # an earlier export's other program
    if os.path.exists(os.path.join(out, artifact.program_file(role))):
      os.remove(os.path.join(out, artifact.program_file(role)))
  if inputs.is_text:
    artifact.write_vocabulary(out, inputs.vocabulary)
  artifact.write_metadata(out, metadata)
  return metadata


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m kd_jax.export",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run's workdir")
  parser.add_argument("--out", required=True,
                      help="the artifact folder to write, e.g. student.export")
  parser.add_argument("--teachers", action="store_true", help="also export the teacher ensemble")
  parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                      help="comma-separated platforms the programs run on")
  parser.add_argument("--allow_unfinished", action="store_true",
                      help="export the newest student checkpoint of a run without results.json")
  args = parser.parse_args(argv)
  with cli.exit_statuses():
    metadata = export_workdir(args.workdir, args.out, teachers=args.teachers,
                              platforms=tuple(p for p in args.platforms.split(",") if p),
                              allow_unfinished=args.allow_unfinished)
  shape = "x".join(str(d) for d in metadata["input"]["shape"])
  print(f"exported {', '.join(metadata['models'])} of {metadata['source']['workdir']} to "
        f"{os.path.abspath(args.out)} (input {metadata['input']['dtype']} N x {shape}, "
        f"{metadata['num_classes']} classes, platforms {','.join(metadata['platforms'])})",
        file=sys.stdout, flush=True)


if __name__ == "__main__":
  main()
