"""benchmarks/device_check.sh: the GPU checklist's parts run, each writes its JSON lines, the
summary is written, and a part that fails or runs past its limit makes the exit status 1 (run on
the CPU, at the --smoke sizes)."""

import json
import os
import subprocess
import time

import pytest

from benchmarks import device_check, torch_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "device_check.sh")
NOT_NEEDED = ("tensorflow_datasets", "grain", "tensorboardX")


def _check(args, tmp_path, env_extra=None, timeout=1500):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
  env.pop("OUT", None)
  return subprocess.run(["bash", SCRIPT, str(tmp_path / "out"), *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _parts(out):
  with open(out / "parts.jsonl") as f:
    return {record["name"]: record for record in map(json.loads, f)}


def _records(out, name):
  return device_check.read_records(str(out / f"{name}.jsonl"))


def _blocking_path(tmp_path):
  """A PYTHONPATH folder whose tensorflow_datasets, grain and tensorboardX fail to import, as on a
  machine without them."""
  folder = tmp_path / "blocked"
  for name in NOT_NEEDED:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
  return str(folder)


@pytest.mark.e2e
@pytest.mark.skipif(os.environ.get("KD_JAX_SLOW_TESTS") != "1",
                    reason="every part of the check at smoke size (~5 min on 2 cores); "
                           "KD_JAX_SLOW_TESTS=1 runs it")
def test_smoke_check_runs_every_part_without_tfds_grain_or_tensorboardx(tmp_path):
  result = _check(["--smoke"], tmp_path, {"PYTHONPATH": _blocking_path(tmp_path)})
  out = tmp_path / "out"
  names = [part.name for part in device_check.smoke_parts()]
  assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
  parts = _parts(out)
  assert list(parts) == names and all(p["status"] == "ok" for p in parts.values()), parts
  for part in device_check.smoke_parts():
    assert len(_records(out, part.name)) == part.records, part.name
    assert (out / f"{part.name}.log").stat().st_size > 0
  (imports,) = _records(out, "imports")
  assert imports["ok"] and imports["missing"] == [] and imports["backend"] == "cpu"
  assert {r["method"] for r in _records(out, "methods")} == {"unroll", "vmap", "scan"}
  assert all(r["compiled_memory_bytes"] > 0 for r in _records(out, "memory"))
  assert [r.get("event") for r in _records(out, "estimate")][-1] == "study_estimate"
  side = _records(out, "side_by_side_lenet5") + _records(out, "side_by_side_preresnet")
  assert all(r["jax_step_ms"] > 0 for r in side)
  if torch_reference.available():
    assert all(r["torch_step_ms"] > 0 and "cpu" in r["torch"] for r in side)
  summary = (out / "summary.txt").read_text()
  assert f"{len(names)}/{len(names)} parts ok" in summary and summary.strip() in result.stdout
  for name in names:
    assert any(line.startswith(name) and " ok " in line for line in summary.splitlines()), name
  steps = _records(out, "steps_d20") + _records(out, "steps_d56")
  assert len([line for line in summary.splitlines() if line.lstrip().startswith("steps_d")]) == \
      len(steps) + 2  # a line per step in the step table, after one per part in the parts table


def test_a_failed_part_does_not_stop_the_others_and_fails_the_check(tmp_path):
  result = _check(["--smoke", "--parts", "memory", "imports", "--part-args",
                   "memory=--no-such-flag"], tmp_path, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  parts = _parts(tmp_path / "out")
  assert parts["memory"]["status"] == "failed" and parts["memory"]["returncode"] == 2
  assert "--no-such-flag" in parts["memory"]["command"]
  assert "unrecognized arguments: --no-such-flag" in (tmp_path / "out" / "memory.log").read_text()
  assert parts["imports"]["status"] == "ok" and parts["imports"]["records"] == 1
  assert "1/2 parts ok; not ok: memory" in (tmp_path / "out" / "summary.txt").read_text()


def test_a_part_past_its_limit_is_stopped_and_the_rest_skipped_when_imports_fail(tmp_path):
  start = time.time()
  result = _check(["--smoke", "--parts", "memory", "imports", "estimate", "--limit", "memory=2",
                   "--part-args", "imports=--no-such-flag"], tmp_path, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert time.time() - start < 60
  parts = _parts(tmp_path / "out")
  assert parts["memory"]["status"] == "timeout" and parts["memory"]["seconds"] < 2 + 15
  assert parts["imports"]["status"] == "failed"
  assert parts["estimate"]["status"] == "skipped" and parts["estimate"]["seconds"] == 0


def test_unknown_part_is_one_line(tmp_path):
  result = _check(["--parts", "no_such_part"], tmp_path, timeout=60)
  assert result.returncode != 0 and "unknown part(s) no_such_part" in result.stderr
