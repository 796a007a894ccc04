"""The exported-model artifact (`python -m kd_jax.export`) and the record of a run's model inputs.

An artifact is a folder:

  export.json        what the programs expect and return, and where they come from (below)
  student.jaxexport  the student: a jax.export program (serialized StableHLO) with its trained
                     variables and the input normalization baked in as constants
  ensemble.jaxexport (with --teachers) the teacher ensemble likewise: the log of its members' mean
                     softmax probabilities
  vocabulary.txt     (text models) the vocabulary, one token per line, of ids FIRST_WORD_ID, ...

Each program maps a batch of inputs, float32 (N, H, W, C) images with values in [0, 255] as the
dataset stores them (uint8 images cast to float32, which is exact) or int32 (N, L) token ids, to
float32 (N, num_classes) logits: softmax gives the class probabilities. N is symbolic (any batch
size) unless export.json's input.batch_size fixes it. Running one needs JAX (jax.export.deserialize)
and nothing of kd_jax.

export.json: format, format_version, models ({role: {file, output, params}}), input (kind 'image' or
'tokens', shape without the batch axis, dtype, value_range, layout, batch_size, preprocess:
how an image file becomes an input), normalization (mean, std and the formula folded into the
programs), classes (names, or null where unknown), num_classes, text (tokenizer and ids, for text
models), platforms, source (kd_jax and jax versions, workdir, student step, a summary of the config,
the run's test results).

normalization.json, in a run's workdir, records the inputs the run's models were trained on (the
channel statistics it standardized with, input shape and dtype, classes and tokens); an export reads
it there instead of computing the statistics again from the dataset.

This module imports neither JAX nor kd_jax's models: `python -m kd_jax.predict` reads artifacts
through it.
"""

import json
import os

from kd_jax import files
from kd_jax.errors import KdJaxError

ARTIFACT_FILE = "export.json"
FORMAT = "kd_jax.export"
FORMAT_VERSION = 1
VOCABULARY_FILE = "vocabulary.txt"
NORMALIZATION_FILE = "normalization.json"
PROGRAM_SUFFIX = ".jaxexport"
ROLES = ("student", "ensemble")
INPUT_KINDS = ("image", "tokens")


def program_file(role: str) -> str:
  return f"{role}{PROGRAM_SUFFIX}"


def normalization_record(mean, std, input_shape, input_dtype: str, num_classes: int,
                         num_tokens: int = 0, center_crop=None) -> dict:
  """normalization.json's content: the per-channel `mean` and `std` of the training images scaled to
  [0, 1] (channel statistics, before the 1e-8 that standardization adds to std), the shape and dtype
  of one example ('uint8' images, 'int32' token ids), the classes and token count, and for streamed
  runs the evaluation transform of image files (center_crop: {'size', 'crop_ratio'})."""
  return {"mean": [float(x) for x in mean], "std": [float(x) for x in std],
          "input_shape": [int(d) for d in input_shape], "input_dtype": str(input_dtype),
          "num_classes": int(num_classes), "num_tokens": int(num_tokens),
          "center_crop": center_crop}


def write_normalization(workdir: str, record: dict) -> None:
  files.write_json(os.path.join(workdir, NORMALIZATION_FILE), record)


def read_normalization(workdir: str):
  """normalization.json of `workdir`, or None where the run wrote none (older runs)."""
  path = os.path.join(workdir, NORMALIZATION_FILE)
  if not os.path.isfile(path):
    return None
  record = _read_json(path, "the run's model inputs")
  missing = sorted({"mean", "std", "input_shape", "input_dtype", "num_classes"} - set(record))
  if missing:
    raise KdJaxError(f"{path} lacks {', '.join(missing)}; delete it to let the export compute the "
                     "statistics from the dataset again.")
  return record


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise KdJaxError(f"{path} ({what}) cannot be read ({type(e).__name__}); export the model "
                     "again.") from e
  if not isinstance(value, dict):
    raise KdJaxError(f"{path} ({what}) is not a JSON object; export the model again.")
  return value


def write_metadata(folder: str, metadata: dict) -> None:
  files.write_json(os.path.join(folder, ARTIFACT_FILE), metadata)


def read_metadata(folder: str) -> dict:
  """An artifact's export.json, checked: a folder that is not one (or of a newer format) is a
  one-line KdJaxError."""
  path = os.path.join(folder, ARTIFACT_FILE)
  if not os.path.isdir(folder) or not os.path.isfile(path):
    raise KdJaxError(f"{folder} is not an exported model (no {ARTIFACT_FILE}); make one with "
                     "python -m kd_jax.export --workdir=RUN --out=FOLDER.")
  metadata = _read_json(path, "an exported model's description")
  if metadata.get("format") != FORMAT:
    raise KdJaxError(f"{path} is not a kd_jax export (format {metadata.get('format')!r}).")
  if metadata.get("format_version") != FORMAT_VERSION:
    raise KdJaxError(f"{path} has format version {metadata.get('format_version')!r}; this kd_jax "
                     f"reads version {FORMAT_VERSION}: export the model again with it.")
  try:
    kind, shape = metadata["input"]["kind"], metadata["input"]["shape"]
    models, num_classes = metadata["models"], int(metadata["num_classes"])
    valid = kind in INPUT_KINDS and all(int(d) > 0 for d in shape) and num_classes > 0 and all(
        role in ROLES and isinstance(entry.get("file"), str) for role, entry in models.items())
  except (KeyError, TypeError, ValueError, AttributeError):
    valid = False
  if not valid or not models:
    raise KdJaxError(f"{path} is damaged (its input, models or num_classes are missing or "
                     "invalid); export the model again.")
  return metadata


def write_vocabulary(folder: str, vocabulary) -> None:
  files.write_text(os.path.join(folder, VOCABULARY_FILE), "\n".join(vocabulary) + "\n")


def read_vocabulary(folder: str) -> tuple:
  path = os.path.join(folder, VOCABULARY_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return tuple(f.read().split("\n")[:-1])
  except (OSError, UnicodeDecodeError) as e:
    raise KdJaxError(f"{path} cannot be read ({type(e).__name__}); export the model again.") from e
