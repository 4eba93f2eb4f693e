"""The package's shape: modules import each other top-down (no cycles; each layer only from the layers below it),
commands define their flags only when run, every error a user can fix is a UserError, and nothing points outside the
repository."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "regnet_jax"
COMMANDS = [
    "train",
    "evaluate",
    "predict",
    "convert",
    "export",
    "sweep",
    "complexity",
    "benchmark",
    "prepare",
    "models.__main__",
]
# docs/architecture.md: core <- config <- models, data <- training, weights, design_space, benchmarking <- commands.
LAYERS = [
    ("core",),
    ("config",),
    ("models", "data"),
    ("training", "weights", "design_space", "benchmarking"),
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in the file (lazy imports inside functions included)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # 'from pkg import submodule'
    return {m for m in out if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and "regnet_jax.weights.formats" in graph["regnet_jax.weights.layouts"]
    assert {"regnet_jax.core.cli", "regnet_jax.training.trainer", "regnet_jax.benchmarking.timing"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer(module: str) -> int:
    """The layer of a package module (0: core and the package itself, ...; the commands are above all of them)."""
    if module.removeprefix("regnet_jax.") in COMMANDS:
        return len(LAYERS)
    if module == "regnet_jax":
        return 0
    package = module.split(".")[1]
    (index,) = [i for i, packages in enumerate(LAYERS) if package in packages]
    return index


def test_every_module_imports_only_from_its_layer_and_below():
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} == {p for packages in LAYERS for p in packages}
    top_level = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top_level == {c for c in COMMANDS if "." not in c}, "only the commands live at the top level"
    upward = [f"{m} -> {n}" for m, imported in sorted(graph.items()) for n in sorted(imported) if layer(n) > layer(m)]
    assert not upward, upward


def test_importing_a_command_defines_no_flags():
    """Each command defines its flags in define_flags(flag_values), called only when it runs, and has a main(argv)."""
    libraries = sorted(m for m in import_graph() if m.removeprefix("regnet_jax.") not in COMMANDS)
    code = f"""
import importlib, json
from absl import flags
for m in {libraries!r}:
    importlib.import_module(m)
before = set(flags.FLAGS)
commands = [importlib.import_module("regnet_jax." + c) for c in {COMMANDS!r}]
defined = {{}}
for c in commands:
    fresh = flags.FlagValues()
    c.define_flags(fresh)
    defined[c.__name__] = len(list(fresh)) if callable(c.main) else 0
print(json.dumps({{"new": sorted(set(flags.FLAGS) - before), "defined": defined}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["new"] == []
    assert len(result["defined"]) == len(COMMANDS) and all(n > 0 for n in result["defined"].values()), result["defined"]


def test_every_error_a_user_can_fix_is_a_user_error():
    """The shared runner reports exactly the UserErrors (exit status 2, one line); the trainer's failures are not."""
    from regnet_jax.core.errors import UserError

    # The trainer's failures, not the user's input: exit status 1 and 3 (python -m regnet_jax.train); Ctrl-C: 130.
    failures = {"regnet_jax.training.trainer.NonFiniteLossError", "regnet_jax.training.preemption.Preempted",
                "regnet_jax.core.interrupts.Interrupted"}  # fmt: skip
    errors = {}
    for name in import_graph():
        module = importlib.import_module(name)
        errors.update({f"{name}.{c.__name__}": c for c in vars(module).values()
                       if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == name})  # fmt: skip
    assert len(errors) > 15
    assert {n for n, c in errors.items() if not issubclass(c, UserError)} == failures


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_nothing_points_outside_the_repository():
    """No code, test, config or doc reads a folder beside the clone (a user's clone has nothing beside it)."""
    pattern = re.compile(r"\.\./shared|shared/reference|/work/(main|wt|shared)\b")
    suffixes = {".py", ".md", ".sh", ".txt", ".cfg", ".toml", ".json", ".yaml", ".yml"}
    hits = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if (
            rel.parts[0].startswith(".")
            and rel.parts[0] != ".ci"
            or not path.is_file()
            or path == pathlib.Path(__file__)
        ):
            continue
        if path.suffix in suffixes or rel.parts[0] == ".ci":
            hits += [
                f"{rel}:{i}"
                for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                if pattern.search(line)
            ]
    assert not hits, hits
