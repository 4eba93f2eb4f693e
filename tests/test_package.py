"""The package's shape: modules import each other top-down (no cycles), and nothing points outside the repository."""

from __future__ import annotations

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "regnet_jax"


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
    assert len(graph) > 20 and "regnet_jax.formats" in graph["regnet_jax.convert"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


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
        if rel.parts[0].startswith(".") and rel.parts[0] != ".ci" or not path.is_file() or path == pathlib.Path(__file__):
            continue
        if path.suffix in suffixes or rel.parts[0] == ".ci":
            hits += [f"{rel}:{i}" for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
