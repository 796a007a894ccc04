"""Classifies images (or reviews) with an exported model, without kd_jax's model code.

  python -m kd_jax.predict --model=student.export IMAGES... [--top_k=5] [--out=predictions.csv]

IMAGES are image files, folders (every image file below them, in sorted order) or .npy arrays of
images as the dataset stores them (N, H, W, C) or (H, W, C), uint8 or float on the [0, 255] scale;
for a text model, .txt files (one review each, tokenized as in training) or .npy arrays of token
ids (N, L). Image files are decoded with PIL to the model's channels (L or RGB) and resized to its
input size (bilinear; a streamed run's models: its evaluation center crop). Each input's top-k
classes and probabilities are printed, one line each, or written with --out as CSV or JSON (by the
file's suffix). --model_role=ensemble uses the teacher ensemble of an export made with --teachers.

A file that cannot be read as an input of the model (damaged, of another kind, or of another shape)
stops the command with one line `error: ...` and exit status 2, as does a damaged artifact.
"""

import argparse
import csv
import io
import os
import sys
import time

import numpy as np
import PIL.Image

from kd_jax import artifact, files, progress
from kd_jax.experiments import cli
from kd_jax.errors import KdJaxError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEXT_SUFFIXES = (".txt",)
OUT_SUFFIXES = (".csv", ".json")
DEFAULT_BATCH_SIZE = 256
_BAR_SECONDS = 0.2  # between redraws of the progress bar on a terminal
_BAR_WIDTH = 30


class Model:
  """An artifact's program for one role, with what its inputs must be."""

  def __init__(self, folder: str, role: str = "student"):
    self.metadata = artifact.read_metadata(folder)
    self.folder = folder
    if role not in self.metadata["models"]:
      raise KdJaxError(f"{folder} holds no {role} model (it has "
                       f"{', '.join(self.metadata['models'])}); export it with --teachers for the "
                       "ensemble.")
    spec = self.metadata["input"]
    self.kind, self.shape = spec["kind"], tuple(int(d) for d in spec["shape"])
    self.dtype = np.float32 if spec["dtype"] == "float32" else np.int32
    self.batch_size = spec.get("batch_size")
    self.classes = self.metadata.get("classes") or [
        str(i) for i in range(self.metadata["num_classes"])]
    self.program = _deserialize(os.path.join(folder, self.metadata["models"][role]["file"]))
    self.vocabulary = artifact.read_vocabulary(folder) if self.kind == "tokens" else None

  def logits(self, batch: np.ndarray) -> np.ndarray:
    return np.asarray(self.program.call(batch.astype(self.dtype)), np.float64)


def _deserialize(path: str):
  import jax  # pylint: disable=g-import-not-at-top (after the cheap checks of the artifact)
  try:
    with open(path, "rb") as f:
      data = f.read()
    return jax.export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except (a damaged program fails in many ways)
    raise KdJaxError(f"{path} is not a readable exported program ({type(e).__name__}); export the "
                     "model again.") from e


# --------------------------------------------------------------------------------------------------
# Inputs


def _listed(path: str, suffixes) -> list:
  """The files below folder `path` whose names end in one of `suffixes`, sorted."""
  found = []
  for root, folders, names in os.walk(path):
    folders[:] = sorted(f for f in folders if not f.startswith("."))
    found += [os.path.join(root, n) for n in sorted(names)
              if n.lower().endswith(suffixes) and not n.startswith(".")]
  return found


def _npy(path: str):
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except (numpy raises many types for a bad file)
    raise KdJaxError(f"{path} is not a readable .npy array ({type(e).__name__}).") from e


def _npy_examples(path: str, model: Model) -> list:
  """[(name, example getter)] of the examples of a .npy array, checked against the model's input."""
  array = _npy(path)
  rank = len(model.shape)
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) or (
      model.kind == "tokens" and not np.issubdtype(array.dtype, np.integer)):
    raise KdJaxError(f"{path} holds {array.dtype} values; the model reads "
                     f"{'integer token ids' if model.kind == 'tokens' else 'images'}.")
  if model.kind == "image" and model.shape[-1] == 1 and array.ndim in (rank - 1, rank):
    if array.shape[-1] != 1:
      array = array[..., None]  # (N, H, W) or (H, W) grayscale
  if array.ndim == rank:
    array = array[None]
  fits = array.ndim == rank + 1 and (
      model.kind == "tokens" or tuple(array.shape[1:]) == model.shape)
  if not fits:
    raise KdJaxError(f"{path} holds an array of shape {array.shape}; the model reads (N, "
                     f"{', '.join(map(str, model.shape))}) "
                     f"{'token ids' if model.kind == 'tokens' else 'images'}.")
  return [(f"{path}[{i}]", lambda i=i: _checked(np.asarray(array[i]), path, model))
          for i in range(array.shape[0])]


def _checked(example: np.ndarray, where: str, model: Model) -> np.ndarray:
  if model.kind == "tokens":
    return _fit_tokens(example, model)
  if example.size and (example.min() < 0 or example.max() > 255 or not np.isfinite(example).all()):
    raise KdJaxError(f"{where} has values outside [0, 255]; the model reads images on the 0-255 "
                     "scale (as uint8 files store them).")
  return example


def _fit_tokens(ids: np.ndarray, model: Model) -> np.ndarray:
  """Token ids cut or padded (with the pad id, at the end) to the model's sequence length."""
  text = model.metadata["text"]
  length = model.shape[0]
  out = np.full(length, text["pad_id"], np.int32)
  kept = np.asarray(ids[:length]).astype(np.int32)
  out[:len(kept)] = kept
  return out


def decode_image(path: str, model: Model) -> np.ndarray:
  """An image file as the model's input: its channels, its size (resized or center-cropped)."""
  preprocess = model.metadata["input"]["preprocess"]
  try:
    with open(path, "rb") as f:
      data = f.read()
    with PIL.Image.open(io.BytesIO(data)) as image:
      image = image.convert(preprocess["color"])
      height, width, channels = model.shape
      if preprocess.get("center_crop"):
        from kd_jax.data import stream  # pylint: disable=g-import-not-at-top (streamed runs only)
        array = np.asarray(image).reshape(image.height, image.width, channels)
        return stream.center_crop(array, height, preprocess["center_crop"]["crop_ratio"])
      if image.size != (width, height):
        image = image.resize((width, height), PIL.Image.BILINEAR)
      return np.asarray(image).reshape(height, width, channels)
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise KdJaxError(f"{path} is not a readable image ({type(e).__name__}).") from e


def _read_review(path: str, model: Model) -> np.ndarray:
  from kd_jax.data import text  # pylint: disable=g-import-not-at-top (text models only)
  try:
    with open(path, encoding="utf-8") as f:
      review = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise KdJaxError(f"{path} is not a readable UTF-8 text file ({type(e).__name__}).") from e
  return text.encode([text.basic_english_tokens(review)], model.vocabulary, model.shape[0])[0]


def examples(paths, model: Model) -> list:
  """[(name, example getter)] of every input named by `paths` (see the module docstring)."""
  suffixes = TEXT_SUFFIXES if model.kind == "tokens" else IMAGE_SUFFIXES
  read = _read_review if model.kind == "tokens" else decode_image
  found = []
  for path in paths:
    if os.path.isdir(path):
      listed = _listed(path, suffixes + (".npy",))
      if not listed:
        raise KdJaxError(f"{path} holds no {' or '.join(suffixes + ('.npy',))} files.")
    elif os.path.isfile(path):
      listed = [path]
    else:
      raise KdJaxError(f"{path} does not exist.")
    for name in listed:
      if name.lower().endswith(".npy"):
        found += _npy_examples(name, model)
      elif model.kind == "tokens" and not name.lower().endswith(TEXT_SUFFIXES):
        raise KdJaxError(f"{name} is not a .txt review or a .npy array of token ids, which this "
                         "text model reads.")
      else:
        found.append((name, lambda name=name: read(name, model)))
  if not found:
    raise KdJaxError("no inputs given; name image files, folders or .npy arrays.")
  return found


# --------------------------------------------------------------------------------------------------
# Predictions


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
  """The indices of the k most probable classes of each row, most probable first (ties: lower
  index first)."""
  return np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]


class Progress:
  """A progress bar on a terminal (stderr), else a line every progress.PROGRESS_SECONDS; off for one batch."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.enabled = total, enabled
    self.terminal = sys.stderr.isatty()
    self.start = self.last = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if not self.enabled or (now - self.last < (_BAR_SECONDS if self.terminal else progress.PROGRESS_SECONDS)
                            and done < self.total):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else 0.0
    status = f"{done}/{self.total} inputs, {rate:.0f}/s, ETA {eta:.0f}s"
    if self.terminal:
      filled = int(_BAR_WIDTH * done / self.total)
      end = "\n" if done >= self.total else ""
      print(f"\r[predict] [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {status}", end=end,
            file=sys.stderr, flush=True)
    else:
      print(f"[predict] {status}", file=sys.stderr, flush=True)


def predict(model: Model, inputs, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE) -> list:
  """[{'input', 'top': [{'class', 'index', 'probability'}]}] for each (name, getter) of `inputs`.

  Inputs go through the program in batches of `batch_size` (the artifact's fixed batch size if it
  has one); a short last batch is padded with copies of its first example, so that every batch has
  one shape and the program compiles once.
  """
  chunk = model.batch_size or min(batch_size, len(inputs))
  k = min(top_k, len(model.classes))
  progress = Progress(len(inputs), enabled=len(inputs) > chunk)
  rows = []
  for start in range(0, len(inputs), chunk):
    part = inputs[start:start + chunk]
    batch = np.stack([get() for _, get in part])
    if len(part) < chunk:
      batch = np.concatenate([batch, np.repeat(batch[:1], chunk - len(part), axis=0)])
    probabilities = softmax(model.logits(batch))[:len(part)]
    for (name, _), p, top in zip(part, probabilities, top_classes(probabilities, k)):
      rows.append({"input": name, "top": [
          {"class": model.classes[i], "index": int(i), "probability": float(p[i])} for i in top]})
    progress.update(start + len(part))
  return rows


def write_predictions(path: str, rows: list) -> None:
  """--out: JSON (the rows as they are) or CSV (input, then class, probability for each rank)."""
  if path.lower().endswith(".json"):
    files.write_json(path, rows)
    return
  k = max(len(row["top"]) for row in rows)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["input"] + [f"{field}{r}" for r in range(1, k + 1)
                               for field in ("class", "probability")])
  for row in rows:
    writer.writerow([row["input"]] + [value for top in row["top"]
                                      for value in (top["class"], f"{top['probability']:.6g}")])
  files.write_text(path, buffer.getvalue())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m kd_jax.predict",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="image files, folders or .npy arrays (text models: .txt or .npy)")
  parser.add_argument("--model", required=True,
                      help="an artifact folder from python -m kd_jax.export")
  parser.add_argument("--model_role", default="student", choices=artifact.ROLES)
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
  parser.add_argument("--out", help="write the predictions to this .csv or .json file")
  args = parser.parse_args(argv)
  with cli.exit_statuses():
    if args.top_k < 1 or args.batch_size < 1:
      raise KdJaxError("--top_k and --batch_size must be >= 1.")
    if args.out and not args.out.lower().endswith(OUT_SUFFIXES):
      raise KdJaxError(f"--out={args.out}: name a .csv or .json file.")
    model = Model(args.model, args.model_role)
    rows = predict(model, examples(args.inputs, model), args.top_k, args.batch_size)
    if args.out:
      write_predictions(args.out, rows)
  if args.out:
    print(f"wrote the top-{min(args.top_k, len(model.classes))} predictions of {len(rows)} inputs "
          f"to {args.out}", flush=True)
    return
  for row in rows:
    print("\t".join([row["input"]] + [f"{top['class']} {top['probability']:.4f}"
                                      for top in row["top"]]), flush=True)


if __name__ == "__main__":
  main()
