"""What every entry point shares: config files, `--config.*` overrides, and how outcomes exit.

- `load_config_file("configs/x.py[:arg]")` imports a config file and calls its get_config([arg]); every
  way that can fail (missing file, syntax error, no get_config, an exception inside) is one KdJaxError.
- `split_overrides(argv)` takes the `--config.KEY=VALUE` arguments out of argv;
  `apply_overrides(config, overrides)` applies them with ml_collections' own flag parsers
  (config_flags), i.e. the semantics documented for `--config.*` flags: a value takes the type of the
  field it replaces (booleans: true/false/t/f/1/0), tuples and a section's dict are Python literals.
  Unknown keys and unparsable values are one-line errors.
- `exit_statuses()` wraps an entry point's work (run.py, sweep.py, python -m kd_jax.report,
  kd_jax.reproduce, kd_jax.fid): a KdJaxError becomes the one line `error: ...` on stderr and its
  exit status (errors.USAGE_EXIT, errors.DIVERGED_EXIT for a DivergedError), Ctrl-C or SIGTERM
  (errors.Interrupted, KeyboardInterrupt) the line `interrupted; rerun the same command to
  resume...` and errors.INTERRUPTED_EXIT. Anything else is a bug and keeps its traceback.
"""

import contextlib
import importlib.util
import os
import sys
import traceback
from typing import Callable, Union

import ml_collections
from absl import flags
from ml_collections import config_flags

from kd_jax.errors import INTERRUPTED_EXIT, Interrupted, KdJaxError

PREFIX = "--config."


def _error_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _where(error: BaseException, path: str) -> str:
  """' (line N)' of the innermost frame of `error` in file `path`, if any."""
  if isinstance(error, SyntaxError) and error.lineno:
    return f" (line {error.lineno})"
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(frame.filename) == os.path.abspath(path)]
  return f" (line {lines[-1]})" if lines else ""


def _folder_contents(path: str) -> str:
  """'a.py, b.py (and the folders c/)': the config files of folder `path`, for an error message."""
  names = sorted(os.listdir(path))
  modules = [os.path.join(path, n) for n in names if n.endswith(".py") and not n.startswith("_")]
  folders = [f"{os.path.join(path, n)}/" for n in names
             if os.path.isdir(os.path.join(path, n)) and not n.startswith((".", "_"))]
  text = ", ".join(modules) or "no config files"
  return f"{text} (and the folders {', '.join(folders)})" if folders else text


def load_module(path: str, what: str = "config file"):
  """Imports the Python file at `path`; one KdJaxError for a missing file or one that fails."""
  if os.path.isdir(path):
    raise KdJaxError(f"{what} {path} is a folder; give one of its files: {_folder_contents(path)}.")
  if not os.path.isfile(path):
    raise KdJaxError(f"{what} {path} does not exist; see configs/ for the ones we ship.")
  name = "kd_jax_config_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(path)[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except KdJaxError as e:
    raise KdJaxError(f"{what} {path}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except (a user's file can raise anything)
    raise KdJaxError(f"{what} {path} fails to load{_where(e, path)}: {_error_line(e)}") from e
  return module


def call_get_config(module, path: str, *args, what: str = "config file"):
  """module.get_config(*args), with a missing get_config or an exception in it as one KdJaxError."""
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise KdJaxError(f"{what} {path} has no get_config(); a config file defines get_config() "
                     "returning an ml_collections.ConfigDict (see configs/quickstart.py).")
  try:
    config = get_config(*args)
  except KdJaxError as e:
    raise KdJaxError(f"{what} {path}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise KdJaxError(f"{what} {path}: get_config({', '.join(map(repr, args))}) raised"
                     f"{_where(e, path)} {_error_line(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise KdJaxError(f"{what} {path}: get_config() returned {type(config).__name__}, not an "
                     "ml_collections.ConfigDict.")
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of `path` or `path:arg` (the argument goes to get_config, as in ml_collections)."""
  path, colon, arg = spec.partition(":")
  module = load_module(path)
  return call_get_config(module, path, *([arg] if colon else []))


def split_overrides(argv) -> tuple:
  """Separates --config.KEY=VALUE arguments (as (KEY, VALUE) pairs) from the others."""
  overrides, rest = [], []
  for arg in argv:
    if not arg.startswith(PREFIX):
      rest.append(arg)
      continue
    key, equals, value = arg[len(PREFIX):].partition("=")
    if not equals or not key:
      raise KdJaxError(f"{arg}: write config overrides as --config.KEY=VALUE.")
    overrides.append((key, value))
  return overrides, rest


def _field(config, key: str):
  """The current value at dotted `key`; KdJaxError if the config has no such key."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node.keys():
      raise KdJaxError(f"unknown config key '{key}' (from --config.{key}); see kd_jax/config.py "
                       "(or config.json in a workdir) for the valid keys.")
    node = node[part]
  return node


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """Applies (KEY, VALUE) overrides to `config` in place (and returns it); see the module docstring."""
  if not overrides:
    return config
  before = {key: _field(config, key) for key, _ in overrides}
  # A section with fields takes a dict of exactly those fields; an empty one (e.g.
  # distill.method_options) takes any dict.
  sections = {key: sorted(value.keys()) for key, value in before.items()
              if isinstance(value, ml_collections.ConfigDict) and value.keys()}
  argv = ["kd_jax"] + [f"{PREFIX}{key}={value}" for key, value in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, lock_config=False,
                                  sys_argv=argv)
  try:
    flag_values(argv)
  except flags.Error as e:
    # "flag --config.KEY=VALUE: reason"
    text = str(e)
    failed = next((k for k, _ in overrides if f"{PREFIX}{k}=" in text), overrides[0][0])
    value = dict(overrides)[failed]
    current = before[failed]
    if failed in sections:
      raise KdJaxError(f"--config.{failed}={value}: config.{failed} is a section; give a dict of "
                       f"all its keys ({', '.join(sections[failed])}) or override its fields one by "
                       f"one, e.g. --config.{failed}.{sections[failed][0]}=...") from e
    raise KdJaxError(f"--config.{failed}={value}: expected a {type(current).__name__} like the "
                     f"field's current value {current!r}.") from e
  for key, keys in sections.items():
    now = sorted(_field(config, key).keys())
    if now != keys:
      missing = sorted(set(keys) - set(now)) or sorted(set(now) - set(keys))
      raise KdJaxError(f"--config.{key}: a section's dict must give exactly its keys "
                       f"({', '.join(keys)}); {'missing' if set(keys) - set(now) else 'unknown'}: "
                       f"{', '.join(missing)}. Or override single fields, e.g. "
                       f"--config.{key}.{keys[0]}=...")
  return config


@contextlib.contextmanager
def exit_statuses(resume_detail: Union[str, Callable[[], str]] = ""):
  """Exits with the status of a KdJaxError or an interruption raised inside (module docstring).

  `resume_detail` ends the interruption's line, e.g. " from runs/x" or " (finished runs are
  skipped)"; a callable is asked when the interruption happens, after the command line is parsed.
  """
  try:
    yield
  except KdJaxError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  except (Interrupted, KeyboardInterrupt):
    detail = resume_detail() if callable(resume_detail) else resume_detail
    print(f"interrupted; rerun the same command to resume{detail}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT)
