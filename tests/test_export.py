"""Exported models (kd_jax/export.py, kd_jax/predict.py): four tiny trained runs, a PreResNet
student with BatchNorm on digits, a digits CNN student of the same teachers (config.teacher.load_from;
exported with its teacher ensemble), a LeNet-5 student on digits resized to 28x28 and a BiLSTM
student on a generated review corpus, exported and
run again in a fresh process that never imports
kd_jax's models (nor flax), against the workdir's student computed here from its checkpoint with a
NumPy transcription of the run's standardization; and the one-line errors of bad inputs.
"""

import json
import os
import subprocess
import sys
import tempfile
import types

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

from conftest import REPO, run_cli
from kd_jax import artifact, export, losses, predict
from kd_jax import data
from kd_jax.models import build_model

CONFIG = "--config=tests/tiny_config.py"
FAST = ["--config.evaluation.augmented_batches=0", "--config.teacher.steps=8",
        "--config.student.steps=8"]
PRERESNET = ["--config.student.model.name=preresnet", "--config.student.model.depth=8",
             "--config.student.model.width=4"]
CNN = ["--config.student.model.name=digits_cnn", "--config.student.model.width=4"]
LENET5 = ["--config.data.image_size=28", "--config.teacher.model.name=lenet5",
          "--config.student.model.name=lenet5", "--config.teacher.ensemble_size=1",
          "--config.teacher.model.width=0", "--config.student.model.width=0"]
_WORDS = (("bad", "awful", "dull"), ("good", "great", "fine"))
_FILLER = ("the", "film", "plot", "was", "and")


def _write_reviews(root):
  """aclImdb/{train,test}/{neg,pos}/<i>_<rating>.txt: filler words with sentiment words."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 24), ("test", 10)):
    for label, folder in enumerate(("neg", "pos")):
      path = root / "aclImdb" / split / folder
      path.mkdir(parents=True)
      for i in range(count):
        words = list(rng.choice(_FILLER, 4)) + list(rng.choice(_WORDS[label], 2))
        rng.shuffle(words)
        (path / f"{i}_{7 if label else 2}.txt").write_text(" ".join(words) + ".")
  return root / "aclImdb"


def _text_run(corpus):
  lstm = "name=bilstm,width=4,embedding_size=4,lstm_layers=1"
  model = dict(item.split("=") for item in lstm.split(","))
  return ([f"--config.data.{k}={v}" for k, v in dict(
      name="imdb_reviews", source="aclimdb", path=str(corpus), sequence_length=12,
      vocab_min_count=1, cache="false").items()] +
          [f"--config.{phase}.model.{k}={v}" for phase in ("teacher", "student")
           for k, v in model.items()] + ["--config.eval_batch_size=20"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: workdir} of the finished tiny runs."""
  root = tmp_path_factory.mktemp("export_runs")
  corpus = _write_reviews(root / "corpus")
  workdirs = {}
  runs = {"preresnet": PRERESNET, "cnn": CNN + [f"--config.teacher.load_from={root / 'preresnet'}"],
          "bilstm": _text_run(corpus), "lenet5": LENET5}
  for name, overrides in runs.items():
    workdirs[name] = root / name
    result = run_cli([CONFIG, f"--workdir={workdirs[name]}", *FAST, *overrides])
    assert result.returncode == 0, result.stderr[-2000:]
  return workdirs


def _config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def _standardization(train_images):
  """The run's standardization in NumPy: float64 channel moments of x / 255, std + 1e-8, float32."""
  if train_images.dtype != np.uint8:
    return None
  x = train_images.reshape(-1, train_images.shape[-1]).astype(np.float64) / 255.0
  return x.mean(axis=0).astype(np.float32), (x.std(axis=0) + 1e-8).astype(np.float32)


def _standardized(images, statistics):
  if statistics is None:  # token ids
    return images
  mean, std = statistics
  return ((images.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def _workdir_outputs(workdir, images, role="student"):
  """The workdir's student logits (or ensemble log mean softmax) on `images`, from checkpoints."""
  config = _config(workdir)
  dataset = data.load_dataset(config.data)
  num_tokens = getattr(dataset, "num_tokens", 0)
  x = _standardized(images, _standardization(dataset.train_images))
  if role == "student":
    model = build_model(config.student.model, dataset.num_classes, num_tokens=num_tokens)
    manager = ocp.CheckpointManager(os.path.join(workdir, "student"))
    state = manager.restore(manager.latest_step())
    manager.close()
    variables = {k: state[k] for k in ("params", "batch_stats") if state.get(k)}
    return np.asarray(model.apply(variables, x, train=False))
  model = build_model(config.teacher.model, dataset.num_classes, num_tokens=num_tokens)
  teachers = os.path.join(config.teacher.load_from or workdir, "teachers")
  members = [ocp.StandardCheckpointer().restore(os.path.join(teachers, f"member_{i}"))
             for i in range(config.teacher.ensemble_size)]
  return np.asarray(losses.ensemble_log_probs(np.stack(
      [model.apply(variables, x, train=False) for variables in members])))


# Run in a fresh interpreter: each artifact's outputs on a .npy of inputs, and its top-1 through
# predict's own input reading; then whether anything of kd_jax's models or flax was imported.
_RELOAD = """
import json, sys
import numpy as np
from kd_jax import predict
tops = {}
for role, folder, inputs, out in zip(*[iter(sys.argv[1:])] * 4):
  model = predict.Model(folder, role)
  np.save(out, model.logits(np.load(inputs)))
  rows = predict.predict(model, predict.examples([inputs], model), top_k=1, batch_size=7)
  tops[out] = [row["top"][0]["index"] for row in rows]
loaded = sorted(m for m in sys.modules if m.startswith(("kd_jax.models", "flax")))
print(json.dumps({"tops": tops, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
  """{(run, role): (artifact folder, test inputs, outputs of the fresh process, its top-1s)}."""
  root = tmp_path_factory.mktemp("exported")
  jobs = []
  for name, workdir in runs.items():
    folder = root / f"{name}.export"
    if name == "cnn":  # the command line, with the ensemble
      result = subprocess.run([sys.executable, "-m", "kd_jax.export", f"--workdir={workdir}",
                               f"--out={folder}", "--teachers", "--platforms=cpu,cuda"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
      assert result.returncode == 0, result.stderr[-2000:]
      assert "exported student, ensemble" in result.stdout
    else:
      export.export_workdir(str(workdir), str(folder))
    test_inputs = data.load_dataset(_config(workdir).data).test_images
    np.save(root / f"{name}_inputs.npy", test_inputs)
    for role in (("student", "ensemble") if name == "cnn" else ("student",)):
      jobs.append((name, role, folder, root / f"{name}_inputs.npy", root / f"{name}_{role}.npy"))
  result = subprocess.run([sys.executable, "-c", _RELOAD, *[str(x) for job in jobs
                                                            for x in job[1:]]],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["loaded"] == []  # neither kd_jax.models nor flax
  return {(name, role): (folder, np.load(inputs), np.load(out), report["tops"][str(out)])
          for name, role, folder, inputs, out in jobs}


@pytest.mark.parametrize("name,role", [("cnn", "student"), ("cnn", "ensemble"),
                                       ("preresnet", "student"), ("bilstm", "student"),
                                       ("lenet5", "student")])
@pytest.mark.e2e
def test_exported_model_gives_the_workdirs_outputs(runs, exported, name, role):
  folder, inputs, outputs, tops = exported[(name, role)]
  expected = _workdir_outputs(runs[name], inputs, role)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5 * max(1.0, scale))
  assert tops == list(np.argmax(outputs, axis=-1))
  with open(runs[name] / "results.json") as f:
    results = json.load(f)
  # The run's own evaluation of the whole test set, to the example.
  labels = data.load_dataset(_config(runs[name]).data).test_labels
  accuracy = np.mean(np.argmax(outputs, -1) == labels)
  assert accuracy == pytest.approx(results[role]["test_accuracy"], abs=1e-12)


@pytest.mark.e2e
def test_artifact_describes_its_inputs(runs, exported):
  metadata = artifact.read_metadata(str(exported[("cnn", "student")][0]))
  assert metadata["input"]["shape"] == [8, 8, 1] and metadata["input"]["batch_size"] is None
  assert metadata["classes"] == [str(i) for i in range(10)]
  assert set(metadata["models"]) == {"student", "ensemble"}
  assert metadata["platforms"] == ["cpu", "cuda"]
  train = data.load_dataset(_config(runs["cnn"]).data).train_images
  mean, std = _standardization(train)
  np.testing.assert_array_equal(np.float32(metadata["normalization"]["mean"]), mean)
  np.testing.assert_array_equal(np.float32(metadata["normalization"]["std"]), std)
  assert metadata["source"]["student_step"] == 8 and metadata["source"]["kd_jax_version"]
  text = artifact.read_metadata(str(exported[("bilstm", "student")][0]))
  assert text["input"] == {**text["input"], "kind": "tokens", "shape": [12], "dtype": "int32"}
  assert text["classes"] == ["neg", "pos"]


@pytest.mark.e2e
def test_predict_reads_image_files_and_text_files(runs, exported, tmp_path, capsys):
  """Digit PNGs in a nested folder (CSV and JSON out), and reviews."""
  folder, native, outputs, _ = exported[("cnn", "student")]
  images = tmp_path / "images" / "nested"
  images.mkdir(parents=True)
  for i in range(3):
    PIL.Image.fromarray(native[i, ..., 0]).save(images / f"{i}.png")
  (images / "notes.md").write_text("not an image, skipped in a folder")
  out = tmp_path / "predictions.json"
  predict.main([f"--model={folder}", str(tmp_path / "images"), f"--out={out}", "--top_k=3"])
  rows = json.loads(out.read_text())
  assert [row["input"] for row in rows] == [str(images / f"{i}.png") for i in range(3)]
  for row, logits in zip(rows, outputs[:3]):
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [top["index"] for top in row["top"]] == list(np.argsort(-probabilities)[:3])
    np.testing.assert_allclose([top["probability"] for top in row["top"]],
                               np.sort(probabilities)[::-1][:3], rtol=1e-5)
  predict.main([f"--model={folder}", str(images / "0.png"), f"--out={tmp_path / 'p.csv'}"])
  header = (tmp_path / "p.csv").read_text().splitlines()[0]
  assert header.startswith("input,class1,probability1,class2")

  text_folder, _, text_outputs, _ = exported[("bilstm", "student")]
  reviews = sorted((runs["bilstm"].parent / "corpus" / "aclImdb" / "test" / "neg").iterdir())
  capsys.readouterr()
  predict.main([f"--model={text_folder}", str(reviews[0]), "--top_k=1"])
  line = capsys.readouterr().out.strip()
  # test/neg/0_2.txt is the first test review (aclimdb order: sorted names, classes alternating).
  assert line.split("\t")[0] == str(reviews[0])
  assert line.split("\t")[1].split()[0] == ("neg", "pos")[int(np.argmax(text_outputs[0]))]


def test_image_files_are_resized_or_cropped_as_the_runs_images():
  """An in-memory run's data.image_size resize (PIL bilinear, sources.resize_images) and a streamed
  run's evaluation center crop (stream.center_crop), applied to a decoded file."""
  from kd_jax.data import sources, stream
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  resized = sources.resize_images(data.Dataset("d", gray, np.zeros(3, np.int32), gray,
                                               np.zeros(3, np.int32), 1), 28).test_images
  rgb = rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)

  def model(shape, preprocess):
    return types.SimpleNamespace(shape=shape, metadata={"input": {"preprocess": preprocess}})

  with tempfile.TemporaryDirectory() as folder:
    for i, image in enumerate(gray):
      PIL.Image.fromarray(image[..., 0]).save(os.path.join(folder, f"{i}.png"))
      np.testing.assert_array_equal(predict.decode_image(
          os.path.join(folder, f"{i}.png"), model((28, 28, 1), {"color": "L"})), resized[i])
    PIL.Image.fromarray(rgb).save(os.path.join(folder, "rgb.png"))
    crop = {"color": "RGB", "center_crop": {"size": 6, "crop_ratio": 0.75}}
    np.testing.assert_array_equal(predict.decode_image(
        os.path.join(folder, "rgb.png"), model((6, 6, 3), crop)), stream.center_crop(rgb, 6, 0.75))


def _one_line_error(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argv)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


@pytest.mark.e2e
def test_bad_inputs_and_artifacts_are_one_line_errors(exported, tmp_path, capsys):
  folder = exported[("preresnet", "student")][0]
  (tmp_path / "foreign.png").write_text("this is text, not a PNG")
  good = tmp_path / "good.png"
  PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
  (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:20])
  (tmp_path / "damaged.npy").write_bytes(b"\x93NUMPY garbage")
  np.save(tmp_path / "wrong_shape.npy", np.zeros((2, 5, 5, 1), np.uint8))
  np.save(tmp_path / "out_of_range.npy", np.full((1, 8, 8, 1), -3.0, np.float32))
  for name, expected in (("foreign.png", "not a readable image"),
                         ("truncated.png", "not a readable image"),
                         ("damaged.npy", "not a readable .npy"),
                         ("wrong_shape.npy", "(2, 5, 5, 1)"),
                         ("out_of_range.npy", "outside [0, 255]"),
                         ("missing.png", "does not exist")):
    assert expected in _one_line_error([f"--model={folder}", str(tmp_path / name)], capsys)
  assert "no ensemble model" in _one_line_error(
      [f"--model={folder}", "--model_role=ensemble", str(good)], capsys)
  assert "not an exported model" in _one_line_error([f"--model={tmp_path}", str(good)], capsys)
  damaged = tmp_path / "damaged.export"
  damaged.mkdir()
  for name in os.listdir(folder):
    (damaged / name).write_bytes((folder / name).read_bytes())
  program = damaged / artifact.program_file("student")
  program.write_bytes(program.read_bytes()[:1000])
  assert "not a readable exported program" in _one_line_error(
      [f"--model={damaged}", str(good)], capsys)
  (damaged / artifact.ARTIFACT_FILE).write_text("{not json")
  assert "cannot be read" in _one_line_error([f"--model={damaged}", str(good)], capsys)

  # The same from the command line, as a user sees it: one line on stderr, exit status 2.
  result = subprocess.run([sys.executable, "-m", "kd_jax.predict", f"--model={folder}",
                           str(tmp_path / "foreign.png")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'foreign.png'} is not a readable image (UnidentifiedImageError)."]


@pytest.mark.e2e
def test_export_refuses_what_it_cannot_export(runs, tmp_path):
  with pytest.raises(export.KdJaxError, match="not a kd_jax run"):
    export.export_workdir(str(tmp_path), str(tmp_path / "out"))
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_bytes((runs["preresnet"] / "config.json").read_bytes())
  with pytest.raises(export.KdJaxError, match="has not finished"):
    export.export_workdir(str(unfinished), str(tmp_path / "out"))
  with pytest.raises(export.KdJaxError, match="holds no student checkpoint"):
    export.export_workdir(str(unfinished), str(tmp_path / "out"), allow_unfinished=True)
  occupied = tmp_path / "occupied"
  occupied.mkdir()
  (occupied / "keep.txt").write_text("someone's file")
  with pytest.raises(export.KdJaxError, match="not an earlier export"):
    export.export_workdir(str(runs["preresnet"]), str(occupied))
  with pytest.raises(export.KdJaxError, match="--platforms"):
    export.export_workdir(str(runs["preresnet"]), str(tmp_path / "out"), platforms=("gpu",))


@pytest.mark.e2e
def test_export_reads_the_runs_normalization_record(runs, tmp_path):
  """A workdir's normalization.json is what an export folds in (no dataset statistics computed)."""
  workdir = tmp_path / "recorded"
  workdir.mkdir()
  source = runs["preresnet"]
  for name in ("config.json", "results.json"):
    (workdir / name).write_bytes((source / name).read_bytes())
  os.symlink(source / "student", workdir / "student")
  record = artifact.normalization_record([0.5], [0.25], (8, 8, 1), "uint8", 10)
  artifact.write_normalization(str(workdir), record)
  metadata = export.export_workdir(str(workdir), str(tmp_path / "out"), platforms=("cpu",))
  assert metadata["normalization"]["statistics"] == artifact.NORMALIZATION_FILE
  assert metadata["normalization"]["mean"] == [0.5]
  np.testing.assert_array_equal(np.float32(metadata["normalization"]["std"]),
                                np.float32(0.25 + 1e-8))
  model = predict.Model(str(tmp_path / "out"))
  images = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8, 1)
  config = _config(source)
  student = build_model(config.student.model, 10)
  manager = ocp.CheckpointManager(os.path.join(source, "student"))
  state = manager.restore(manager.latest_step())
  manager.close()
  expected = student.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                           (images / np.float32(255) - np.float32(0.5)) / np.float32(0.25 + 1e-8),
                           train=False)
  np.testing.assert_allclose(model.logits(images), np.asarray(expected), rtol=1e-5, atol=1e-5)
