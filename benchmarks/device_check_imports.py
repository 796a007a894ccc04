"""The device check's first part: can this machine run the benchmarks, and what does JAX see?

  python -m benchmarks.device_check_imports [--require-gpu] [--out FILE]

Prints (and appends to FILE) one JSON line: each package's version, the packages that are missing
(with the wheel to carry for each), the benchmark modules that cannot be imported, the packages the
benchmarks must not need that an import pulled in anyway, and JAX's backend and devices. Exit
status 1 if anything the benchmarks need is missing, or, with --require-gpu, JAX sees no GPU.

Missing packages are named by their distribution, e.g. `ml-collections`: on a machine with
internet access, `pip download ml-collections==1.1.0 --no-deps -d wheels/` (the version
requirements.txt pins; ml-collections needs absl-py and PyYAML, which orbax-checkpoint brings
already), then `bash benchmarks/device_check.sh OUT --wheels wheels/` on the device.
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import sys
import traceback

REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "requirements.txt")

# (import name, distribution to carry as a wheel when it is missing)
REQUIRED = (("numpy", "numpy"), ("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"),
            ("optax", "optax"), ("orbax.checkpoint", "orbax-checkpoint"),
            ("ml_collections", "ml-collections"), ("absl", "absl-py"), ("yaml", "PyYAML"),
            ("PIL", "pillow"))
OPTIONAL = (("torch", "torch"),)  # only the PyTorch columns of the side-by-side parts need it
# kd_jax imports these only for streamed data, dataset downloads and TensorBoard files; a GPU
# machine may lack them, so the benchmarks must not import them.
NOT_NEEDED = ("tensorflow_datasets", "grain", "tensorboardX")
BENCHMARK_MODULES = ("benchmarks.kd_step", "benchmarks.side_by_side", "benchmarks.estimate")


def _version(module, distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return str(getattr(module, "__version__", "?"))


def _last_line(error: BaseException) -> str:
  return traceback.format_exception_only(type(error), error)[-1].strip()


def packages(names) -> tuple:
  """({distribution: version} of those that import, [distributions that do not])."""
  versions, missing = {}, []
  for module_name, distribution in names:
    try:
      versions[distribution] = _version(importlib.import_module(module_name), distribution)
    except Exception:  # pylint: disable=broad-except (any failure to import counts as missing)
      missing.append(distribution)
  return versions, missing


def pinned(distributions) -> list:
  """Each distribution as requirements.txt pins it ('ml-collections==1.1.0'), else its name."""
  pins = {}
  if os.path.exists(REQUIREMENTS):
    with open(REQUIREMENTS) as f:
      for line in f:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
          pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(0).strip()
  return [pins.get(re.sub(r"[-_.]+", "-", name).lower(), name) for name in distributions]


def jax_plugins() -> dict:
  """The installed JAX plugin distributions (e.g. jax-cuda13-plugin) and their versions."""
  plugins = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"] or ""
    if name.lower().startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")):
      plugins[name] = dist.version
  return plugins


def devices() -> dict:
  """JAX's backend, its devices and the first one's memory, or the error that prevented it."""
  try:
    import jax  # pylint: disable=import-outside-toplevel (reported, not raised, when broken)
    first = jax.devices()[0]
    stats = first.memory_stats() or {}
    return {"backend": jax.default_backend(), "device_count": jax.device_count(),
            "device_kind": first.device_kind, "device_memory_bytes": stats.get("bytes_limit")}
  except Exception as e:  # pylint: disable=broad-except
    return {"backend": None, "device_count": 0, "device_kind": None,
            "jax_error": _last_line(e)}


def check(require_gpu: bool) -> dict:
  """The record described in the module docstring; its `ok` says whether the parts can run."""
  versions, missing = packages(REQUIRED)
  optional, optional_missing = packages(OPTIONAL)
  problems = []
  for module in BENCHMARK_MODULES:
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"{module}: {_last_line(e)}")
  pulled_in = [name for name in NOT_NEEDED if name in sys.modules]
  problems += [f"the benchmarks imported {name}" for name in pulled_in]
  record = {"event": "imports", "python": sys.version.split()[0], "packages": versions,
            "optional": optional, "optional_missing": optional_missing, "missing": missing,
            "jax_plugins": jax_plugins(), **devices()}
  if require_gpu and record["backend"] != "gpu":
    problems.append(f"JAX sees no GPU (backend {record['backend']}; "
                    f"{record.get('jax_error') or 'check the CUDA plugin and driver'})")
  record["problems"] = problems
  record["ok"] = not missing and not problems
  if missing:
    record["carry"] = (f"pip download {' '.join(pinned(missing))} --no-deps -d wheels/ (on a "
                       "machine with internet), then rerun with --wheels wheels/")
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--require-gpu", action="store_true", help="fail unless JAX sees a GPU")
  parser.add_argument("--out", default="", help="also append the JSON line to this file")
  args = parser.parse_args(argv)
  record = check(args.require_gpu)
  line = json.dumps(record)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  for name in record["missing"]:
    print(f"missing: {name}", file=sys.stderr)
  for problem in record["problems"]:
    print(f"problem: {problem}", file=sys.stderr)
  if record["missing"]:
    print(f"carry: {record['carry']}", file=sys.stderr)
  return 0 if record["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
