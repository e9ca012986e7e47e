"""The package's import graph: no cycle between its units, and every import points down the data's path.

A unit is a subpackage (``edgederm/runtime/``) or a loose module directly under ``edgederm/``;
``converters/`` is the unit ``edgederm.converters``. Function-local imports count like any other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower layers never import higher ones; units on one layer do not import each other.
LAYERS = [
    {"core"},
    {"runtime", "data"},
    {"models", "metrics", "bench"},
    {"training"},
    {"converters"},
    {"export"},
    {"evaluate"},
    {"cli"},
    {"__main__"},
]
LAYER = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    files = {}
    for base, package in ((ROOT / "edgederm", "edgederm"), (ROOT / "converters", "edgederm.converters")):
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = path
    return files


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the places (file:line) of those imports."""
    modules = _modules()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                stem = (
                    ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level
                    else node.module
                )
                targets = [stem, *(f"{stem}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                if not (target or "").startswith("edgederm.") or not any(m == target or m.startswith(target + ".") for m in modules):
                    continue
                source, sink = _unit(module), _unit(target)
                if source != sink and sink != "__init__":
                    edges[(source, sink)].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges


def _cycles(edges) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for source, sink in edges:
        graph[source].add(sink)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_the_packages_units():
    edges = import_edges()
    assert {("runtime", "core"), ("converters", "core"), ("cli", "training")} <= set(edges), "the walk sees the imports"
    cycles = _cycles(edges)
    ties = [f"{a} -> {b} ({', '.join(where)})" for cycle in cycles for (a, b), where in edges.items() if a in cycle and b in cycle]
    assert not cycles, f"import cycles {cycles}:\n" + "\n".join(ties)


def test_every_unit_has_a_layer_and_imports_point_down():
    edges = import_edges()
    units = {_unit(m) for m in _modules()} - {"__init__"}
    assert units <= set(LAYER), f"units without a layer in this test: {sorted(units - set(LAYER))}"
    upward = [f"{a} -> {b} ({', '.join(where)})" for (a, b), where in edges.items() if LAYER[a] <= LAYER[b]]
    assert not upward, "imports that point up (or sideways) the layers:\n" + "\n".join(upward)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]
