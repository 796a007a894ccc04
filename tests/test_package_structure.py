"""The package's shape: no import cycles, no private names taken across modules, and the experiments
layer (sweep, report, suite) importable without JAX."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kd_jax"


def module_name(path: Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict:
  return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict) -> list:
  """(imported kd_jax module, names taken from it, line) for every import in the file, lazy ones in
  functions too; `import a.b as c` and `from a import b` (b a module) both count as importing a.b."""
  tree = ast.parse(path.read_text(), str(path))
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in modules:
          found.append((alias.name, [], node.lineno))
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module not in modules:
        continue
      names = []
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        if submodule in modules:
          found.append((submodule, [], node.lineno))
        else:
          names.append(alias.name)
      if names:
        found.append((node.module, names, node.lineno))
  return found


def private_attribute_uses(path: Path, modules: dict) -> list:
  """`alias._name` where alias is a kd_jax module this file imported (`from kd_jax import x as alias`)."""
  tree = ast.parse(path.read_text(), str(path))
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        if f"{node.module}.{alias.name}" in modules:
          aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in modules and alias.asname:
          aliases[alias.asname] = alias.name
  return [(aliases[node.value.id], node.attr, node.lineno) for node in ast.walk(tree)
          if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]


def import_graph(modules: dict) -> dict:
  graph = {}
  for name, path in modules.items():
    targets = {target for target, _, _ in imports_of(path, modules)}
    # A package's own __init__ runs before any of its modules: importing kd_jax.a.b imports kd_jax.a.
    graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
  return graph


def find_cycle(graph: dict):
  """One cycle as a list of modules, or None (depth-first search, colouring the nodes)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_package_has_no_import_cycle():
  assert find_cycle(import_graph(package_modules())) is None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_takes_a_private_name_from_another():
  modules = package_modules()
  offences = []
  for name, path in modules.items():
    for target, names, line in imports_of(path, modules):
      offences += [f"{name}:{line} imports {target}.{n}" for n in names if n.startswith("_")]
    offences += [f"{name}:{line} uses {target}.{attr}"
                 for target, attr, line in private_attribute_uses(path, modules)]
  assert not offences, "\n".join(offences)


def test_the_private_name_check_sees_both_forms(tmp_path):
  package = tmp_path / "kd_jax"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("_hidden = 1\n")
  (package / "b.py").write_text("from kd_jax.a import _hidden\nfrom kd_jax import a as a_lib\n"
                                "x = a_lib._hidden\n")
  modules = {"kd_jax": package / "__init__.py", "kd_jax.a": package / "a.py",
             "kd_jax.b": package / "b.py"}
  assert imports_of(package / "b.py", modules) == [("kd_jax.a", ["_hidden"], 1), ("kd_jax.a", [], 2)]
  assert private_attribute_uses(package / "b.py", modules) == [("kd_jax.a", "_hidden", 3)]


@pytest.mark.parametrize("module", ["kd_jax.experiments.report", "kd_jax.experiments.sweep",
                                    "kd_jax.experiments.suite", "kd_jax.config", "kd_jax.workdir"])
def test_reading_and_planning_runs_does_not_import_jax(module):
  code = (f"import sys, {module}\n"
          "loaded = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]\n"
          "print(','.join(loaded))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"
