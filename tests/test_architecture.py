"""The package's layers, read from the source: no import cycles, no import from a lower layer into
a higher one, and the HTTP server (serve/) imported by the CLI alone. docs/architecture.md draws
the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loratune"

LAYERS: dict[str, int] = {
    "errors": 0,
    "json_files": 1, "config": 1, "tasks": 1, "run_dir": 1, "run_status": 1, "data": 1, "sql": 1, "tatqa": 1,
    "ectsum": 1,
    "models": 2,
    "inference": 3, "training": 3,
    "evaluation": 4,
    "reporting": 5, "export": 5,
    "pipeline": 6, "serve": 6, "ui": 6,
    "cli": 7, "__main__": 8, "__init__": 0,
}
"""Each top-level part of the package and its layer: a module imports only from its own layer or below."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """loratune's own modules that `path` imports anywhere (module level or inside a function)."""
    here = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from loratune.serve import schemas` imports the module loratune.serve.schemas
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known and name != here)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_part_of_the_package_has_a_layer():
    assert {part(m) for m in import_graph()} <= set(LAYERS)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_lower_layer_imports_a_higher_one():
    upward = [f"{m} (layer {LAYERS[part(m)]}) imports {d} (layer {LAYERS[part(d)]})"
              for m, deps in import_graph().items() for d in deps if LAYERS[part(d)] > LAYERS[part(m)]]
    assert not upward, "\n".join(upward)


def test_only_the_cli_and_the_ui_import_the_server():
    users = {m for m, deps in import_graph().items() for d in deps if part(d) == "serve" and part(m) != "serve"}
    assert all(u == "loratune.cli" or part(u) == "ui" for u in users), users


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, None),
])
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_the_graph_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from loratune.serve.app import run_server\n")
    assert imported_modules(source, {"loratune.serve.app"}) == {"loratune.serve.app"}
