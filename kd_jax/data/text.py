"""Text classification datasets (IMDB reviews) as int32 token ids in host memory.

`load_text_dataset(cfg)` returns a `TextDataset` from one of these sources, picked by `cfg.source`:

  aclimdb:    the original Large Movie Review Dataset, `aclImdb/{train,test}/{neg,pos}/*.txt` (the
              folder, or the aclImdb_v1.tar.gz archive read in place); neg = 0, pos = 1. The other
              files of the release (train/unsup/, *.feat, urls_*.txt, imdb.vocab) are not read.
  tfds_text:  a tensorflow-datasets text dataset with features 'text' (tfds.features.Text, stored
              as UTF-8 bytes) and 'label' (ClassLabel), already prepared as array_record, read
              without TensorFlow like the image datasets (kd_jax/data/sources.py): `imdb_reviews`,
              whose plain_text config has splits train / test (25,000 labelled reviews each) and
              unsupervised (not read), and the same labels neg = 0, pos = 1.

From text to model inputs, as the paper's original code (samuelstanton/gnosis, torchtext):
- Tokens: torchtext's 'basic_english' tokenizer, reimplemented (`basic_english_tokens`): lowercase,
  apostrophes and . , ( ) ! ? split off as tokens, double quotes dropped, `<br />` ; : as spaces, then
  split on whitespace.
- Vocabulary: counted on the TRAIN split only; tokens seen at least `data.vocab_min_count` times (the
  original's min_freq 10), most frequent first, ties in code-point order of the token (torchtext's
  order, so the ids never depend on the order the files are read in); `data.vocab_size` > 0 keeps only
  that many (0 = all, the original).
- Ids: PAD_ID = 0 pads, OOV_ID = 1 stands for every token outside the vocabulary, the vocabulary's
  tokens follow from 2. (The original shares id 0 between its '<unk>' and the padding, which its
  packed sequences never read; ours are separate so the model can find the padding by its id.)
- Length: the first `data.sequence_length` tokens of each review (the original's max_len 100), padded
  with PAD_ID at the end.

Example order: reviews sorted by file name, alternating classes (aclimdb), so a `data.train_size`
prefix is balanced; tfds's own stored order (tfds_text). Nothing is downloaded; a missing dataset is a
`KdJaxError` saying how to provide it. Encoded datasets are cached as .npz under `$KD_JAX_CACHE`
(kd_jax.data.sources.cache_dir) when `data.cache` is set, keyed by the files' names, sizes and times
and every setting above.
"""

import collections
import dataclasses
import hashlib
import os
import pathlib
import re
import tarfile
import time

from absl import logging
import numpy as np

from kd_jax import config
from kd_jax.data import sources
from kd_jax.errors import KdJaxError

SOURCES = config.TEXT_SOURCES
PAD_ID = 0  # padding at the end of a review shorter than data.sequence_length
OOV_ID = 1  # any token outside the vocabulary
FIRST_WORD_ID = 2

_CLASSES = ("neg", "pos")  # aclImdb's label folders, in label order (as tfds imdb_reviews)
_SPLITS = ("train", "test")
_ACLIMDB_EXPECTED = ("the aclImdb folder (aclImdb/{train,test}/{neg,pos}/*.txt) or aclImdb_v1.tar.gz, "
                     "from https://ai.stanford.edu/~amaas/data/sentiment/")
_CACHE_FORMAT_VERSION = 1

# torchtext's basic_english normalization, applied in this order after lowercasing.
_BASIC_ENGLISH_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " ")))


@dataclasses.dataclass(frozen=True)
class TextDataset:
  """A whole tokenized dataset in host memory.

  The training pipeline reads a split's model inputs as `train_images` / `test_images` (its name for
  them, kept so that one code path serves images and text); here they are the token arrays.
  """

  name: str
  train_tokens: np.ndarray  # int32, (N, sequence_length), PAD_ID at the end
  train_labels: np.ndarray  # int32, (N,)
  test_tokens: np.ndarray  # int32, (M, sequence_length)
  test_labels: np.ndarray  # int32, (M,)
  num_classes: int
  vocabulary: tuple  # the tokens of ids FIRST_WORD_ID, FIRST_WORD_ID + 1, ...

  def __post_init__(self):
    for split in _SPLITS:
      tokens, labels = getattr(self, f"{split}_tokens"), getattr(self, f"{split}_labels")
      if tokens.dtype != np.int32 or tokens.ndim != 2 or labels.dtype != np.int32:
        raise ValueError(f"{self.name} {split}: tokens must be int32 (N, L) and labels int32, got "
                         f"{tokens.dtype} {tokens.shape} and {labels.dtype}")
      if labels.shape != tokens.shape[:1]:
        raise ValueError(f"{self.name} {split}: {len(tokens)} reviews but {len(labels)} labels")
      if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
        raise KdJaxError(f"dataset {self.name!r}: {split} labels span {labels.min()}..{labels.max()} "
                         f"but it has {self.num_classes} classes; check the data files")
    if self.train_tokens.shape[1] != self.test_tokens.shape[1]:
      raise ValueError(f"{self.name}: train and test sequences differ in length")

  @property
  def num_tokens(self) -> int:
    """The number of ids (rows of a model's embedding): PAD_ID, OOV_ID and the vocabulary."""
    return FIRST_WORD_ID + len(self.vocabulary)

  @property
  def train_images(self):
    return self.train_tokens

  @property
  def test_images(self):
    return self.test_tokens


def basic_english_tokens(text: str) -> list:
  """torchtext's get_tokenizer('basic_english'): the rules above, then str.split()."""
  line = text.lower()
  for pattern, replacement in _BASIC_ENGLISH_RULES:
    line = pattern.sub(replacement, line)
  return line.split()


def build_vocabulary(token_lists, min_count: int, max_size: int = 0) -> tuple:
  """The tokens of `token_lists` seen at least `min_count` times, by count (descending) then token
  (code-point order); the first `max_size` of them when max_size > 0."""
  counts = collections.Counter()
  for tokens in token_lists:
    counts.update(tokens)
  ranked = sorted((item for item in counts.items() if item[1] >= min_count),
                  key=lambda item: (-item[1], item[0]))
  if max_size > 0:
    ranked = ranked[:max_size]
  return tuple(token for token, _ in ranked)


def encode(token_lists, vocabulary, length: int) -> np.ndarray:
  """int32 (N, length): each list's first `length` tokens as ids (OOV_ID outside the vocabulary),
  PAD_ID after its end."""
  ids = {token: FIRST_WORD_ID + i for i, token in enumerate(vocabulary)}
  out = np.full((len(token_lists), length), PAD_ID, np.int32)
  for row, tokens in enumerate(token_lists):
    kept = tokens[:length]
    out[row, :len(kept)] = [ids.get(token, OOV_ID) for token in kept]
  return out


def load_text_dataset(cfg) -> TextDataset:
  """Loads, tokenizes and encodes the dataset `cfg` (a kd_jax.config.data_config()) describes."""
  if cfg.source not in SOURCES:
    raise KdJaxError(f"data.source={cfg.source!r} is not a text source ({', '.join(SOURCES)})")
  if cfg.image_size:
    raise KdJaxError(f"data.image_size={cfg.image_size} resizes images; text datasets need 0.")
  length, min_count, max_size = int(cfg.sequence_length), int(cfg.vocab_min_count), int(cfg.vocab_size)
  if length < 1 or min_count < 1 or max_size < 0:
    raise KdJaxError(f"text data needs data.sequence_length >= 1, data.vocab_min_count >= 1 and "
                     f"data.vocab_size >= 0 (0 = no cap); got {length}, {min_count}, {max_size}")
  start = time.perf_counter()
  if cfg.source == "aclimdb":
    path = sources.existing_path(cfg, _ACLIMDB_EXPECTED)
    name = cfg.name or "imdb_reviews"
    fingerprint = _path_fingerprint(path)
    read = lambda: (_read_aclimdb(path), len(_CLASSES))  # noqa: E731
  else:
    builder = sources.prepared_tfds_builder(cfg.name, cfg.data_dir or None)
    name = cfg.name
    fingerprint = _path_fingerprint(pathlib.Path(str(builder.data_dir)))
    read = lambda: _read_tfds(builder, cfg)  # noqa: E731
  settings = (length, min_count, max_size, cfg.train_split, cfg.test_split)
  key = repr((_CACHE_FORMAT_VERSION, cfg.source, name, settings, fingerprint))

  def build():
    splits, num_classes = read()
    print(f"[data] tokenizing {sum(len(texts) for texts, _ in splits.values())} reviews of {name}",
          flush=True)
    tokens = {split: [basic_english_tokens(text) for text in texts]
              for split, (texts, _) in splits.items()}
    vocabulary = build_vocabulary(tokens["train"], min_count, max_size)
    arrays = {"num_classes": np.asarray(num_classes), "vocabulary": np.asarray(vocabulary, dtype=str)}
    for split, (_, labels) in splits.items():
      arrays[f"{split}_tokens"] = encode(tokens[split], vocabulary, length)
      arrays[f"{split}_labels"] = np.asarray(labels, np.int32)
    return arrays

  arrays = _cached(name, key, build) if cfg.cache else build()
  dataset = TextDataset(
      name=name, train_tokens=arrays["train_tokens"], train_labels=arrays["train_labels"],
      test_tokens=arrays["test_tokens"], test_labels=arrays["test_labels"],
      num_classes=int(arrays["num_classes"]), vocabulary=tuple(str(t) for t in arrays["vocabulary"]))
  dataset = _take_train_prefix(dataset, int(cfg.train_size or 0))
  logging.info("Loaded %s from %s in %.1fs: train %s, test %s, %d ids.", name, cfg.source,
               time.perf_counter() - start, dataset.train_tokens.shape, dataset.test_tokens.shape,
               dataset.num_tokens)
  return dataset


def _take_train_prefix(dataset, train_size):
  """The first `train_size` training reviews (0 = all). The vocabulary stays the whole split's, as the
  original code builds it before subsampling."""
  return sources.take_train_prefix(dataset, train_size, inputs="train_tokens", what="reviews")


# ----------------------------------------------------------------------------------------------------
# aclimdb

def _read_aclimdb(path):
  """{split: (texts, labels)} from the folder or tar archive at `path` (or its aclImdb/ child)."""
  if path.is_dir():
    root = path / "aclImdb" if (path / "aclImdb" / "train").is_dir() else path
    files = {}
    for split in _SPLITS:
      for label, class_name in enumerate(_CLASSES):
        folder = root / split / class_name
        if not folder.is_dir():
          raise KdJaxError(f"data.path={str(path)!r} has no {split}/{class_name}/ folder: expected "
                           f"{_ACLIMDB_EXPECTED}")
        files[split, label] = {f.name: f for f in folder.iterdir()
                               if f.name.endswith(".txt") and f.is_file()}
    read = lambda source: source.read_bytes()  # noqa: E731
  elif path.name.lower().endswith((".tar", ".tar.gz", ".tgz")) and tarfile.is_tarfile(path):
    files = _tar_reviews(path)
    read = lambda source: source  # noqa: E731
  else:
    raise KdJaxError(f"data.path={str(path)!r} is neither a folder nor a tar archive: point it at "
                     f"{_ACLIMDB_EXPECTED}")
  splits = {}
  for split in _SPLITS:
    per_class = [sorted(files[split, label].items()) for label in range(len(_CLASSES))]
    if not any(per_class):
      raise KdJaxError(f"{path}: {split}/neg and {split}/pos hold no .txt reviews; expected "
                       f"{_ACLIMDB_EXPECTED}")
    texts, labels = [], []
    for rank in range(max(len(f) for f in per_class)):  # alternate classes: balanced prefixes
      for label, class_files in enumerate(per_class):
        if rank < len(class_files):
          file_name, source = class_files[rank]
          texts.append(_decode(read(source), f"{path}: {split}/{_CLASSES[label]}/{file_name}"))
          labels.append(label)
    splits[split] = (texts, labels)
  return splits


def _tar_reviews(archive):
  """{(split, label): {file name: bytes}} of the [prefix/]{train,test}/{neg,pos}/*.txt members."""
  files = {(split, label): {} for split in _SPLITS for label in range(len(_CLASSES))}
  try:
    with tarfile.open(archive, "r:*") as tar:
      for member in tar:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if (not member.isfile() or len(parts) < 3 or parts[-3] not in _SPLITS
            or parts[-2] not in _CLASSES or not parts[-1].endswith(".txt")):
          continue
        split, class_name, file_name = parts[-3:]
        files[split, _CLASSES.index(class_name)][file_name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise KdJaxError(f"cannot read the tar archive {archive} ({e}); re-copy it") from e
  return files


def _decode(raw: bytes, where: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise KdJaxError(f"{where} is not UTF-8 text ({e}); re-extract the original archive") from e


def _path_fingerprint(path):
  """Names, sizes and modification times of every file under `path` (or of `path` itself)."""
  if path.is_file():
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
  entries = []
  for folder, _, names in os.walk(path):
    for name in names:
      stat = os.stat(os.path.join(folder, name))
      entries.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size,
                      stat.st_mtime_ns))
  return (str(path.resolve()), hashlib.sha1(repr(sorted(entries)).encode()).hexdigest())


# ----------------------------------------------------------------------------------------------------
# tfds_text

_TFDS_READ_CHUNK = 4096


def _read_tfds(builder, cfg):
  """({split: (texts, labels)}, number of classes) of a prepared tfds text dataset."""
  features = builder.info.features
  if "text" not in features or "label" not in features:
    raise KdJaxError(f"tfds dataset {cfg.name!r} has features {', '.join(features)}; "
                     "data.source='tfds_text' reads 'text' and 'label' (e.g. imdb_reviews)")
  splits = {}
  for split, split_name in zip(_SPLITS, (cfg.train_split, cfg.test_split)):
    if split_name.split("[")[0] not in builder.info.splits:
      raise KdJaxError(f"tfds dataset {cfg.name!r} has no split {split_name!r} (it has "
                       f"{', '.join(builder.info.splits)}); set data.train_split / data.test_split")
    source = builder.as_data_source(split=split_name)
    texts, labels = [], []
    for start in range(0, len(source), _TFDS_READ_CHUNK):
      for example in source.__getitems__(list(range(start, min(start + _TFDS_READ_CHUNK,
                                                               len(source))))):
        text = example["text"]
        texts.append(_decode(text, f"a {cfg.name} {split} review") if isinstance(text, bytes)
                     else str(text))
        labels.append(int(example["label"]))
    if not texts:
      raise KdJaxError(f"tfds dataset {cfg.name!r}: split {split_name!r} is empty; rebuild it")
    splits[split] = (texts, labels)
  return splits, features["label"].num_classes


# ----------------------------------------------------------------------------------------------------
# cache

def _cached(name, key, build):
  """build() through an .npz under sources.cache_dir()/text, named by a hash of `key`."""
  digest = hashlib.sha1(key.encode()).hexdigest()[:16]
  stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)  # tfds names may hold '/' and ':'
  path = sources.cache_dir() / "text" / f"{stem}-{digest}.npz"
  return sources.cached_npz(path, build, f"the tokenized {name}")
