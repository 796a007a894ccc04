"""Imports PyTorch teachers of the CIFAR-100 distillation benchmark into a kd_jax teacher workdir.

  python -m kd_jax.import_teacher --torch=ckpt.pth --arch=resnet32x4 --out=runs/teachers/resnet32x4
  python run.py --config=configs/cifar_kd.py --workdir=runs/kd_resnet32x4 \
      --config.teacher.model.name=resnet32x4 --config.teacher.ensemble_size=1 \
      --config.teacher.load_from=runs/teachers/resnet32x4 --config.student.model.name=resnet8x4

Each --torch file is a state_dict of the reference definition of --arch (RepDistiller's `models/`,
mdistiller's `mdistiller/models/cifar/`; kd_jax/models/cifar_zoo.py lists the names), bare or in the
{'model': ...}, {'net': ...} or {'state_dict': ...} dict those projects save, with or without
DataParallel's 'module.' prefix. Several --torch files make an ensemble: member_0, member_1, ... in
the order given. The run then needs config.teacher.model.name = --arch (its other fields, width
included, at their defaults), config.teacher.ensemble_size = the number of files, and CIFAR-100 data
at 32x32 (the run prints the teachers' test accuracy first, a check of the import).

The workdir holds teachers/member_<i>/ (kd_jax.checkpoint.save_variables, what a kd_jax teacher
run writes) and imported_teachers.json (the architecture, class count, source files with their
SHA-256, and the config overrides that load them). Conversion: conv weights OIHW -> HWIO, Linear
weights (out, in) -> (in, out), BatchNorm weight / bias / running_mean / running_var -> scale / bias
/ mean / var; num_batches_tracked is dropped. Every variable's key comes from its flax path
(kd_jax.models.cifar_layers.state_dict_key), and every key of the file must find its variable.

Inputs: kd_jax standardizes images with the mean and std of the training set it loads, which for
CIFAR-100 agree with the constants of the reference code ((0.5071, 0.4867, 0.4408),
(0.2675, 0.2565, 0.2761)) to about 1e-4.

PyTorch is optional (`pip install 'kd_jax[torch]'`) and imported only here; files are read with
torch.load(weights_only=True), which loads tensors and plain containers and runs no pickled code.
Bad input (a missing or unreadable file, an unknown --arch, a state_dict whose keys or shapes are
not the architecture's) is one line naming the first key that does not fit, exit status 2, and
nothing written.
"""

import argparse
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kd_jax import checkpoint, files
from kd_jax.experiments import cli
from kd_jax.errors import KdJaxError
from kd_jax.models.cifar_layers import state_dict_key
from kd_jax.models.cifar_zoo import CIFAR_MODEL_NAMES, cifar_model
from kd_jax.study.teachers import member_dir

IMPORT_FILE = "imported_teachers.json"
TEACHERS_DIR = "teachers"
IMAGE_SHAPE = (32, 32, 3)  # CIFAR
DEFAULT_NUM_CLASSES = 100
STATE_DICT_WRAPPERS = ("model", "net", "state_dict")  # where RepDistiller / mdistiller keep it
DATA_PARALLEL_PREFIX = "module."
IGNORED_SUFFIX = "num_batches_tracked"


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top (optional: only this command needs it)
  except ImportError:
    raise KdJaxError("reading PyTorch checkpoints needs PyTorch: pip install 'kd_jax[torch]' "
                     "(or torch==2.13.0)") from None
  return torch


def read_state_dict(path: str) -> dict:
  """The state_dict in the PyTorch file `path` as {key: float32 numpy array}, unwrapped from
  {'model' | 'net' | 'state_dict': ...} and without DataParallel's 'module.' prefix."""
  torch = _import_torch()
  if not os.path.isfile(path):
    raise KdJaxError(f"--torch file {path} does not exist")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except (a damaged or foreign file fails many ways)
    reason = " ".join(str(e).split())[:200]
    raise KdJaxError(f"--torch file {path} is not a PyTorch checkpoint that torch.load("
                     f"weights_only=True) reads ({type(e).__name__}: {reason})") from None
  state_dict = loaded
  if isinstance(loaded, dict):
    wrapper = next((k for k in STATE_DICT_WRAPPERS if isinstance(loaded.get(k), dict)), None)
    if wrapper is not None:
      state_dict = loaded[wrapper]
  if (not isinstance(state_dict, dict) or not state_dict
      or not all(isinstance(v, torch.Tensor) for v in state_dict.values())):
    raise KdJaxError(f"--torch file {path} holds no state_dict (a dict of tensors, bare or under "
                     f"{' / '.join(repr(k) for k in STATE_DICT_WRAPPERS)})")
  if all(key.startswith(DATA_PARALLEL_PREFIX) for key in state_dict):
    state_dict = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
  return {key: value.detach().to(torch.float32).numpy() for key, value in state_dict.items()}


def variables_template(model) -> dict:
  """{(collection, *path): shape} of the model's variables, in the order the model creates them
  (the forward pass's; jax.eval_shape's result has its dicts sorted, the traced init's not)."""
  order = []

  def init():
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
    order.extend(traverse_util.flatten_dict(variables))
    return variables

  shapes = traverse_util.flatten_dict(jax.eval_shape(init))
  return {path: tuple(shapes[path].shape) for path in order}


def to_flax_layout(value: np.ndarray) -> np.ndarray:
  """PyTorch conv (O, I, H, W) -> flax (H, W, I, O); Linear (out, in) -> (in, out); 1-D as is."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


def torch_shape(flax_shape) -> tuple:
  """The PyTorch shape of a variable of `flax_shape` (the inverse of to_flax_layout)."""
  if len(flax_shape) == 4:
    height, width, inputs, outputs = flax_shape
    return (outputs, inputs, height, width)
  return tuple(reversed(flax_shape))


def convert(state_dict: dict, arch: str, num_classes: int, source: str) -> dict:
  """The flax variables ({'params', 'batch_stats'}) of model `arch` from a PyTorch state_dict.

  Raises KdJaxError naming the first key that does not fit: one the model lacks (in the file's
  order), one of another shape, or one the model needs and the file lacks (in the model's order).
  """
  template = variables_template(cifar_model(arch, num_classes, jnp.float32))
  wanted = {state_dict_key(path[0], path[1:]): path for path in template}
  given = {key: value for key, value in state_dict.items() if not key.endswith(IGNORED_SUFFIX)}
  where = f"--torch file {source} does not fit --arch={arch} (--num_classes={num_classes})"
  unexpected = [key for key in given if key not in wanted]
  missing = [key for key in wanted if key not in given]
  misfits = [key for key in given if key in wanted
             and to_flax_layout(given[key]).shape != template[wanted[key]]]
  counts = (f"{len(unexpected)} unexpected, {len(missing)} missing, {len(misfits)} mis-shaped "
            "key(s); are --arch and --num_classes the file's architecture and class count?")
  if unexpected:
    raise KdJaxError(f"{where}: {unexpected[0]} is not a key of {arch} ({counts})")
  if misfits:
    key = misfits[0]
    raise KdJaxError(f"{where}: {key} has shape {tuple(given[key].shape)}, {arch} wants "
                     f"{torch_shape(template[wanted[key]])} ({counts})")
  if missing:
    raise KdJaxError(f"{where}: {missing[0]} is missing ({counts})")
  variables = {}
  for key, path in wanted.items():
    value = to_flax_layout(given[key])
    if not np.isfinite(value).all():
      raise KdJaxError(f"--torch file {source}: {key} holds non-finite values (a diverged "
                       "training?)")
    variables[path] = np.ascontiguousarray(value)
  return traverse_util.unflatten_dict(variables)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def import_teachers(sources, arch: str, num_classes: int, out: str) -> dict:
  """Converts the PyTorch files `sources` (one per ensemble member) into the teacher workdir `out`;
  returns what it writes to out/imported_teachers.json. Everything is read and checked before
  anything is written."""
  if arch not in CIFAR_MODEL_NAMES:
    raise KdJaxError(f"unknown --arch {arch!r}; valid: {', '.join(CIFAR_MODEL_NAMES)}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise KdJaxError(f"--num_classes must be a positive integer, got {num_classes!r}")
  if not sources:
    raise KdJaxError("give at least one --torch file")
  out = os.path.abspath(out)
  teachers_dir = os.path.join(out, TEACHERS_DIR)
  if os.path.exists(teachers_dir) or os.path.exists(os.path.join(out, IMPORT_FILE)):
    raise KdJaxError(f"--out {out} already holds teachers; choose a new folder or delete it")
  sources = [os.path.abspath(source) for source in sources]
  members = [convert(read_state_dict(source), arch, num_classes, source) for source in sources]
  import torch  # pylint: disable=g-import-not-at-top (read_state_dict has checked it is there)
  record = {
      "arch": arch,
      "num_classes": num_classes,
      "image_shape": list(IMAGE_SHAPE),
      "ensemble_size": len(members),
      "members": [{"member": i, "source": source, "sha256": _sha256(source)}
                  for i, source in enumerate(sources)],
      "torch_version": torch.__version__,
      "config": {"teacher.model.name": arch, "teacher.ensemble_size": len(members),
                 "teacher.load_from": out},
  }
  os.makedirs(teachers_dir, exist_ok=True)
  for i, variables in enumerate(members):
    checkpoint.save_variables(member_dir(teachers_dir, i), variables)
  files.write_json(os.path.join(out, IMPORT_FILE), record)
  return record


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m kd_jax.import_teacher",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--torch", action="extend", nargs="+", default=[], metavar="FILE",
                      help="PyTorch state_dict file(s); several make an ensemble, in this order")
  parser.add_argument("--arch", required=True, help=f"one of {', '.join(CIFAR_MODEL_NAMES)}")
  parser.add_argument("--num_classes", type=int, default=DEFAULT_NUM_CLASSES)
  parser.add_argument("--out", required=True, help="the teacher workdir to create")
  args = parser.parse_args(argv)
  with cli.exit_statuses():
    record = import_teachers(args.torch, args.arch, args.num_classes, args.out)
  overrides = " ".join(f"--config.{key}={value}" for key, value in record["config"].items())
  print(f"imported {record['ensemble_size']} {args.arch} teacher(s) ({args.num_classes} classes) "
        f"into {record['config']['teacher.load_from']}; distill from them with\n"
        f"  python run.py --config=configs/cifar_kd.py --workdir=WORKDIR {overrides}")


if __name__ == "__main__":
  main()
