"""IMDB text path: tokenizer, vocabulary and both source layouts on small generated corpora, the BiLSTM
(masking, against a NumPy transcription), and a configs/imdb_kd.py study that trains, resumes exactly
and reports.

Nothing here needs the real IMDB data: the corpora are written in tmp_path, in the aclImdb layout (a
folder and a .tar.gz) and as tfds `imdb_reviews` prepared by tfds' own imdb_reviews builder from a
generated aclImdb archive (only its download is replaced), which is what `tfds build imdb_reviews`
writes.
"""

import functools
import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import KdJaxError, losses, parallel, runtime, study, train
from kd_jax import distill
from kd_jax.experiments import report
from kd_jax.errors import Interrupted
from kd_jax import config as kd_config
from kd_jax import data
from kd_jax.data import augment, text
from kd_jax.models import build_model
from kd_jax.models.lstm import BiLSTM
from kd_jax.data import placement

# A two-class corpus with a signal a tiny model finds in a few dozen steps: each review mixes filler
# words with sentiment words of its class.
_FILLER = ("the", "movie", "plot", "actor", "scene", "film", "story", "and", "it", "was")
_SENTIMENT = (("bad", "awful", "boring", "worst"), ("good", "great", "superb", "best"))


def _corpus(num_per_class, seed):
  """[(text, label)] with HTML line breaks, punctuation and capitals as IMDB reviews have."""
  rng = np.random.default_rng(seed)
  reviews = []
  for i in range(num_per_class):
    for label in (0, 1):
      words = list(rng.choice(_FILLER, rng.integers(3, 9)))
      words += list(rng.choice(_SENTIMENT[label], rng.integers(1, 4)))
      rng.shuffle(words)
      words[0] = words[0].capitalize()
      reviews.append((" ".join(words) + f". Rated {i % 10}/10!<br /><br />\"Yes\"", label))
  return reviews


_TRAIN, _TEST = _corpus(24, seed=0), _corpus(10, seed=1)


def _write_aclimdb(root, splits, reverse=False):
  """aclImdb/{split}/{neg,pos}/{i}_{rating}.txt, plus the release's unlabelled and metadata files
  (which must be ignored); files are created in reverse order with reverse=True."""
  for split, reviews in splits.items():
    items = list(enumerate(reviews))
    for i, (review, label) in reversed(items) if reverse else items:
      folder = root / "aclImdb" / split / text._CLASSES[label]  # pylint: disable=protected-access
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i}_{7 if label else 2}.txt").write_text(review, encoding="utf-8")
  unsup = root / "aclImdb" / "train" / "unsup"
  unsup.mkdir(parents=True, exist_ok=True)
  (unsup / "0_0.txt").write_text("unlabelled words never counted " * 20)
  (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://example.com\n")
  (root / "aclImdb" / "imdb.vocab").write_text("the\n")
  return root / "aclImdb"


def _tar(folder, archive, reverse=False):
  """A .tar.gz of `folder` (as aclImdb/...), members in sorted or reverse-sorted order."""
  paths = sorted(p for p in folder.rglob("*") if p.is_file())
  with tarfile.open(archive, "w:gz") as tar:
    for path in reversed(paths) if reverse else paths:
      tar.add(path, arcname=str(path.relative_to(folder.parent)))
  return archive


def _prepare_tfds_imdb_reviews(data_dir, archive):
  """tfds' imdb_reviews builder, run on a local aclImdb archive instead of its download."""
  from etils import epath
  from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder as imdb

  def members():
    with tarfile.open(archive) as tar:
      for member in tar:
        if member.isfile():
          yield member.name, tar.extractfile(member)

  class LocalImdbReviews(imdb.Builder, skip_registration=True):
    name = "imdb_reviews"

    @classmethod
    def _get_pkg_dir_path(cls):
      return epath.Path(imdb.__file__).parent  # the real builder's metadata files

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(members(), os.path.join("aclImdb", "train")),
              "test": self._generate_examples(members(), os.path.join("aclImdb", "test")),
              "unsupervised": self._generate_examples(members(), os.path.join("aclImdb", "train"),
                                                      labeled=False)}

  LocalImdbReviews(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  """{name: data config} of the same corpus in every layout."""
  root = tmp_path_factory.mktemp("imdb")
  folder = _write_aclimdb(root / "forward", {"train": _TRAIN, "test": _TEST})
  reversed_folder = _write_aclimdb(root / "reversed", {"train": _TRAIN, "test": _TEST}, reverse=True)
  archive = _tar(folder, root / "aclImdb_v1.tar.gz")
  _prepare_tfds_imdb_reviews(root / "tfds", archive)
  common = dict(name="imdb_reviews", sequence_length=16, vocab_min_count=1, cache=False)
  return {
      "folder": kd_config.data_config(source="aclimdb", path=str(folder), **common),
      "parent_folder": kd_config.data_config(source="aclimdb", path=str(root / "forward"), **common),
      "reversed_folder": kd_config.data_config(source="aclimdb", path=str(reversed_folder), **common),
      "tar": kd_config.data_config(source="aclimdb", path=str(archive), **common),
      "reversed_tar": kd_config.data_config(
          source="aclimdb", path=str(_tar(folder, root / "reversed.tar.gz", reverse=True)), **common),
      "tfds": kd_config.data_config(source="tfds_text", data_dir=str(root / "tfds"), **common),
  }


# ---------------------------------------------------------------------------------------------------
# Tokens, vocabulary, ids


def test_basic_english_tokens_match_torchtext_rules():
  # torchtext's basic_english by hand: lowercase; ' . , ( ) ! ? split off; " dropped; <br /> ; : spaces.
  assert text.basic_english_tokens('I didn\'t like it.<br /><br />"Bad" (really); 10/10? No: ok,fine!') == [
      "i", "didn", "'", "t", "like", "it", ".", "bad", "(", "really", ")", "10/10", "?", "no", "ok",
      ",", "fine", "!"]
  assert text.basic_english_tokens("  \t\n") == []


def test_vocabulary_and_ids_by_hand():
  train = [text.basic_english_tokens(t) for t in ("a b b", "b c. C!")]
  # counts: b 3, c 2, then a, '.', '!' once each; ties in code-point order: '!' (33) < '.' (46) < 'a'.
  assert text.build_vocabulary(train, min_count=1) == ("b", "c", "!", ".", "a")
  assert text.build_vocabulary(train[::-1], min_count=1) == ("b", "c", "!", ".", "a")
  assert text.build_vocabulary(train, min_count=2) == ("b", "c")
  assert text.build_vocabulary(train, min_count=1, max_size=3) == ("b", "c", "!")
  vocabulary = ("b", "c", "!", ".", "a")
  tokens = [["a", "zzz", "b"], [], ["c"] * 7]
  # PAD_ID 0, OOV_ID 1, then b=2, c=3, '!'=4, '.'=5, a=6; the first 5 tokens kept, padding at the end.
  np.testing.assert_array_equal(text.encode(tokens, vocabulary, 5), np.array(
      [[6, 1, 2, 0, 0], [0, 0, 0, 0, 0], [3, 3, 3, 3, 3]], np.int32))
  assert (text.PAD_ID, text.OOV_ID, text.FIRST_WORD_ID) == (0, 1, 2)
  assert BiLSTM(num_classes=2, num_tokens=3).pad_id == text.PAD_ID  # the model masks the same id


def _pairs(tokens, labels):
  return sorted((tuple(row), int(label)) for row, label in zip(tokens, labels))


def test_every_layout_gives_the_same_vocabulary_and_ids(layouts):
  loaded = {name: data.load_dataset(cfg) for name, cfg in layouts.items()}
  reference = loaded["folder"]
  assert reference.num_classes == 2 and reference.name == "imdb_reviews"
  assert reference.train_tokens.shape == (48, 16) and reference.test_tokens.shape == (20, 16)
  assert reference.train_tokens.dtype == np.int32 and reference.train_labels.dtype == np.int32
  assert reference.train_images is reference.train_tokens  # what the pipeline reads
  # The vocabulary is the train split's only: "unlabelled" (train/unsup) and test-only words are out.
  expected = text.build_vocabulary([text.basic_english_tokens(t) for t, _ in _TRAIN], min_count=1)
  assert reference.vocabulary == expected and "unlabelled" not in expected
  assert reference.num_tokens == len(expected) + 2
  for name, dataset in loaded.items():
    assert dataset.vocabulary == reference.vocabulary, name
    if name != "tfds":  # the aclimdb reader's order: sorted file names, classes alternating
      np.testing.assert_array_equal(dataset.train_tokens, reference.train_tokens, err_msg=name)
      np.testing.assert_array_equal(dataset.test_labels, reference.test_labels, err_msg=name)
  # tfds keeps its own (hash-shuffled) order: the same (ids, label) pairs.
  for split in ("train", "test"):
    assert _pairs(getattr(loaded["tfds"], f"{split}_tokens"), getattr(loaded["tfds"], f"{split}_labels")) \
        == _pairs(getattr(reference, f"{split}_tokens"), getattr(reference, f"{split}_labels"))
  np.testing.assert_array_equal(reference.train_labels[:4], [0, 1, 0, 1])  # balanced prefixes
  # Each review encoded independently from its text, as text.encode states.
  first_neg = (layouts["folder"].path + "/train/neg/0_2.txt")
  with open(first_neg, encoding="utf-8") as f:
    np.testing.assert_array_equal(reference.train_tokens[0], text.encode(
        [text.basic_english_tokens(f.read())], reference.vocabulary, 16)[0])


def test_oov_truncation_padding_and_vocabulary_options(layouts):
  cfg = kd_config.data_config(**{**layouts["folder"].to_dict(), "vocab_min_count": 30,
                                 "sequence_length": 40, "train_size": 6})
  dataset = data.load_dataset(cfg)
  # A review has 4 to 11 words, then ". rated k/10 ! yes": fewer than 40 ids, so all end in padding.
  assert (dataset.train_tokens[:, -1] == text.PAD_ID).all()
  counts = {}
  for review, _ in _TRAIN:
    for token in text.basic_english_tokens(review):
      counts[token] = counts.get(token, 0) + 1
  assert all(counts[t] >= 30 for t in dataset.vocabulary) and "superb" not in dataset.vocabulary
  assert (dataset.train_tokens == text.OOV_ID).any()  # rarer words, e.g. the sentiment words
  assert dataset.train_tokens.shape == (6, 40)  # train_size keeps a prefix; test stays whole
  assert dataset.test_tokens.shape == (20, 40)
  capped = data.load_dataset(kd_config.data_config(**{**layouts["folder"].to_dict(), "vocab_size": 3,
                                                      "sequence_length": 4}))
  assert len(capped.vocabulary) == 3 and capped.train_tokens.shape[1] == 4
  assert capped.train_tokens.max() <= text.FIRST_WORD_ID + 2


def test_tokenized_dataset_is_cached(layouts, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("KD_JAX_CACHE", str(tmp_path / "cache"))
  cfg = kd_config.data_config(**{**layouts["tar"].to_dict(), "cache": True})
  first = data.load_dataset(cfg)
  assert "[data] cached the tokenized imdb_reviews" in capsys.readouterr().out
  again = data.load_dataset(cfg)
  assert "[data] read the tokenized imdb_reviews from the cache" in capsys.readouterr().out
  assert again.vocabulary == first.vocabulary
  np.testing.assert_array_equal(again.train_tokens, first.train_tokens)
  other = data.load_dataset(kd_config.data_config(**{**cfg.to_dict(), "sequence_length": 5}))
  assert "tokenizing" in capsys.readouterr().out and other.train_tokens.shape[1] == 5


def _load_error(**fields):
  with pytest.raises(KdJaxError) as info:
    data.load_dataset(kd_config.data_config(**{"name": "imdb_reviews", **fields}))
  message = str(info.value)
  assert "\n" not in message
  return message


def test_absent_data_says_how_to_provide_it(tmp_path):
  message = _load_error(source="aclimdb", path=str(tmp_path / "nowhere"))
  assert "does not exist" in message and "aclImdb_v1.tar.gz" in message
  assert "data.source='aclimdb'" in _load_error(source="aclimdb", path="")
  (tmp_path / "empty").mkdir()
  assert "no train/neg/ folder" in _load_error(source="aclimdb", path=str(tmp_path / "empty"))
  message = _load_error(source="tfds_text", data_dir=str(tmp_path))
  assert "not prepared" in message and "tfds build imdb_reviews" in message
  assert "aclImdb_v1.tar.gz" in message


# ---------------------------------------------------------------------------------------------------
# The model


def _tiny_bilstm(num_tokens=12):
  return build_model(kd_config.model_config(name="bilstm", width=5, embedding_size=6, lstm_layers=2),
                     2, num_tokens=num_tokens)


def _numpy_lstm(sequence, params, cell_size):
  """Final (c, h) and outputs of one direction over `sequence` (T, D), gates i, f, g, o as PyTorch:
  c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c')."""
  sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
  h, c, outputs = np.zeros(cell_size), np.zeros(cell_size), []
  for x in sequence:
    gate = {g: x @ params[f"i{g}"]["kernel"] + h @ params[f"h{g}"]["kernel"] + params[f"h{g}"]["bias"]
            for g in "ifgo"}
    c = sigmoid(gate["f"]) * c + sigmoid(gate["i"]) * np.tanh(gate["g"])
    h = sigmoid(gate["o"]) * np.tanh(c)
    outputs.append(h)
  return h, np.stack(outputs)


def _numpy_bilstm(tokens, params, layers, cell_size):
  """The original model on one review WITHOUT padding: its packed sequence, in float64."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = params["Embed_0"]["embedding"][tokens]
  for layer in range(1, layers + 1):
    forward_h, forward_out = _numpy_lstm(x, params[f"layer{layer}_forward"], cell_size)
    backward_h, backward_out = _numpy_lstm(x[::-1], params[f"layer{layer}_backward"], cell_size)
    x = np.concatenate([forward_out, backward_out[::-1]], axis=-1)
  final = np.concatenate([forward_h, backward_h])
  return final @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]


def test_bilstm_matches_a_numpy_transcription_and_ignores_padding():
  model = _tiny_bilstm()
  reviews = [[3, 4, 5, 6, 7, 8, 9], [11, 2], [5], []]
  batch = text.encode([[str(t) for t in r] for r in reviews], tuple(str(i) for i in range(2, 12)), 10)
  np.testing.assert_array_equal(batch[1], [11, 2, 0, 0, 0, 0, 0, 0, 0, 0])
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10), jnp.int32))
  logits = np.asarray(model.apply(variables, jnp.asarray(batch)))
  assert logits.dtype == np.float32 and logits.shape == (4, 2)
  for review, row in zip(reviews[:3], logits):
    np.testing.assert_allclose(row, _numpy_bilstm(np.array(review), variables["params"], 2, 5),
                               rtol=1e-5, atol=1e-6)
  # More or less padding after each review changes nothing.
  np.testing.assert_array_equal(logits[:, :], np.asarray(model.apply(
      variables, jnp.pad(jnp.asarray(batch), ((0, 0), (0, 7))))))
  # An all-padding review reads one padding position.
  np.testing.assert_allclose(logits[3], _numpy_bilstm(np.array([0]), variables["params"], 2, 5),
                             rtol=1e-5, atol=1e-6)


def test_bilstm_initialization_and_parameters_as_pytorch():
  model = build_model(kd_config.model_config(name="bilstm"), 2, num_tokens=1000)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 1), jnp.int32))["params"]
  # torch.nn.LSTM(128, 70, 2, bidirectional=True) + Linear(140, 2) + Embedding: PyTorch has two
  # biases per gate where flax has one (4 gates x 70 x 4 directions fewer parameters).
  torch_count = 2 * (4 * 70 * (128 + 70) + 2 * 4 * 70) + 2 * (4 * 70 * (140 + 70) + 2 * 4 * 70) + 282
  counted = sum(x.size for x in jax.tree.leaves(params))
  assert counted == torch_count - 4 * 4 * 70 + 1000 * 128
  bound = 70 ** -0.5
  kernel = params["layer2_backward"]["hi"]["kernel"]
  assert float(jnp.abs(kernel).max()) <= bound and float(jnp.abs(kernel).max()) > 0.9 * bound
  assert float(jnp.abs(params["layer1_forward"]["hf"]["bias"]).max()) <= 2 * bound
  assert abs(float(jnp.std(params["Embed_0"]["embedding"])) - 1.0) < 0.02


def test_fused_step_runs_the_teachers_on_tokens_like_the_cached_logits():
  """The distillation step with the teacher ensemble inside it equals the step that gathers the
  ensemble's precomputed logits (what unaugmented text uses by default), up to float rounding."""
  model = build_model(kd_config.model_config(name="bilstm", width=4, embedding_size=4, lstm_layers=1),
                      2, num_tokens=12)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 12, (8, 6)).astype(np.int32)
  tokens[np.arange(6)[None, :] >= rng.integers(1, 7, (8, 1))] = text.PAD_ID
  labels = rng.integers(0, 2, 8).astype(np.int32)
  mesh = parallel.make_mesh()
  tx = optax.sgd(0.5)
  data_on_device = parallel.replicate(placement.DeviceData(
      train_images=tokens, train_labels=labels, test_images=tokens, test_labels=labels,
      mean=np.zeros(1, np.float32), std=np.ones(1, np.float32)), mesh)
  init = jax.jit(lambda key: train.create_state(model, tx, key, (6,)))  # compiled once: it is slow
  teachers = {"params": jax.tree.map(lambda *members: jnp.stack(members),
                                     *(init(jax.random.PRNGKey(seed)).params for seed in (3, 4)))}
  table = jax.jit(lambda t: losses.ensemble_log_probs(jax.vmap(lambda v: model.apply(v, tokens))(t)))(
      teachers)
  outcomes = []
  for cached, teacher_inputs in ((False, teachers), (True, table)):
    spec = distill.DistillSpec(batch_size=4, augment=augment.make_policy("none"),
                               method=distill.LogitKD(temperature=1.0),
                               teachers=distill.CACHED_LOGITS if cached else distill.TEACHERS_IN_STEP)
    step = train.make_distill_step(model, model, tx, spec, mesh)
    state = init(jax.random.PRNGKey(2))
    for _ in range(2):
      state, metrics = step(state, teacher_inputs, data_on_device)
    outcomes.append((state.params, metrics))
  (in_step, in_step_metrics), (gathered, gathered_metrics) = outcomes
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), in_step, gathered)
  for key in ("loss", "kl", "agreement", "accuracy"):
    np.testing.assert_allclose(in_step_metrics[key], gathered_metrics[key], rtol=1e-5, atol=1e-6)
  initial = init(jax.random.PRNGKey(2)).params
  assert not np.allclose(initial["Dense_0"]["kernel"], in_step["Dense_0"]["kernel"])


def test_text_and_image_models_and_policies_are_not_mixed():
  with pytest.raises(KdJaxError, match="reads token ids but the data are images"):
    build_model(kd_config.model_config(name="bilstm"), 2)
  with pytest.raises(KdJaxError, match="reads images but the data are token ids"):
    build_model(kd_config.model_config(name="mlp"), 2, num_tokens=10)
  with pytest.raises(KdJaxError, match="'crop_flip' transforms images; token inputs"):
    augment.make_policy("crop_flip")(jax.random.PRNGKey(0), jnp.zeros((2, 5), jnp.int32))
  config = _study_config({"path": "unused"})
  config.data.augment = "crop_flip"
  with pytest.raises(KdJaxError, match=r"data.augment='crop_flip' transforms images; text data"):
    kd_config.validate(config)
  config.data.augment, config.distill.augment = "none", "mixup"
  with pytest.raises(KdJaxError, match=r"distill.augment='mixup' transforms images"):
    kd_config.validate(config)


# ---------------------------------------------------------------------------------------------------
# configs/imdb_kd.py end to end


def test_imdb_config_is_the_original_recipe():
  from configs import imdb_kd
  assert imdb_kd.VARIANTS == ("m1", "m3", "m5")
  for variant, m in (("m1", 1), ("m3", 3), ("m5", 5)):
    config = imdb_kd.get_config(variant)
    kd_config.validate(config)
    assert config.teacher.ensemble_size == m
  config = imdb_kd.get_config()
  assert config.teacher.ensemble_size == 5
  assert (config.data.sequence_length, config.data.vocab_min_count, config.data.vocab_size) == (
      100, 10, 0)
  for phase in (config.teacher, config.student):
    assert (phase.model.name, phase.model.width, phase.model.embedding_size,
            phase.model.lstm_layers) == ("bilstm", 70, 128, 2)
    assert (phase.epochs, phase.batch_size) == (100, 10)
    opt = phase.optimizer
    assert (opt.name, opt.learning_rate, opt.final_learning_rate, opt.momentum, opt.nesterov,
            opt.weight_decay) == ("sgd", 5e-2, 1e-6, 0.9, True, 1e-4)
  assert (config.distill.temperature, config.distill.alpha, config.distill.loss) == (
      1.0, 0.0, "forward_kl")
  assert config.data.augment == "none" and config.distill.augment == ""


def _study_config(data_fields):
  """configs/imdb_kd.py:m3 at test scale (one LSTM layer: compiling two takes twice as long, and
  the model tests cover stacking)."""
  from configs import imdb_kd
  config = imdb_kd.get_config("m3")
  config.data.update(dict(source="aclimdb", sequence_length=16, vocab_min_count=1, cache=False,
                          **data_fields))
  for phase in (config.teacher, config.student):
    phase.model.update(dict(width=8, embedding_size=8, lstm_layers=1))
    phase.steps = 30
    phase.batch_size = 8
    phase.optimizer.learning_rate = 0.5
  config.eval_batch_size = 10
  config.evaluation.compression = False  # timings differ between runs; tests/test_compression.py
  config.evaluation.augmented_batches = 0
  config.log_every_steps = 10
  config.checkpoint_every_steps = 10
  return config


class _StopAfter:
  """runtime.stop_requested that answers True at its n-th call: the loop asks once before each step,
  so a signal 'arrives' there; the loop saves and raises Interrupted like for SIGTERM."""

  def __init__(self, n):
    self.calls, self.n = 0, n

  def __call__(self):
    self.calls += 1
    return self.calls == self.n


def _student_params(workdir):
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.join(workdir, "student"))
  params = manager.restore(manager.latest_step())["params"]
  manager.close()
  return params


@pytest.mark.e2e
def test_study_trains_resumes_exactly_and_reports(layouts, tmp_path, monkeypatch, capsys):
  config = _study_config({"path": layouts["folder"].path})
  uninterrupted = study.run(config, str(tmp_path / "uninterrupted"))
  out = capsys.readouterr().out
  assert "kd_jax: imdb_reviews (48 train / 20 test, 2 classes)" in out

  # The same study stopped at student step 17 (after the teachers' 30 steps and the loop's check at
  # their end), then resumed. (Resuming teachers is the image path's, tests/test_resume.py.)
  split = str(tmp_path / "split")
  monkeypatch.setattr(runtime, "stop_requested", _StopAfter(31 + 18))
  with pytest.raises(Interrupted):
    study.run(config, split)
  assert "[student] stopped at step 17/30" in capsys.readouterr().out
  monkeypatch.undo()
  resumed = study.run(config, split)
  assert "[student] resuming at step 17/30" in capsys.readouterr().out
  assert resumed == uninterrupted  # bit-identical metrics
  jax.tree.map(np.testing.assert_array_equal, _student_params(split),
               _student_params(str(tmp_path / "uninterrupted")))

  # It trained (chance is 0.5): 30 steps fit most of the 48 training reviews.
  assert len(resumed["teachers"]) == 3
  assert resumed["ensemble"]["train_accuracy"] >= 0.9 and resumed["ensemble"]["test_accuracy"] >= 0.7
  assert resumed["student"]["train_accuracy"] >= 0.8 and resumed["student"]["train_agreement"] >= 0.8
  losses = [json.loads(line) for line in open(tmp_path / "uninterrupted" / "metrics.jsonl")]
  student = [r["loss"] for r in losses if r.get("phase") == "student" and "loss" in r]
  assert student[-1] < student[0]

  table = report.write_report([str(tmp_path / "uninterrupted")], str(tmp_path / "report"),
                              plots=False)
  assert "student" in table.lower()
  assert (tmp_path / "report" / "results.md").exists() and (tmp_path / "report" / "runs.csv").exists()
