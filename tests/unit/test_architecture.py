"""The layout keeps the shape docs/architecture.md draws: layers, import directions, no cycles, short modules.

The import graph is read from the source with `ast`, not by importing anything, and it counts every import
statement wherever it sits: inside a function, under `if TYPE_CHECKING:`, in a `try:`. An import hidden in a
function to dodge a cycle is still a cycle here.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("packager", "streams", "projections")

# Each layer and the layers it may import (itself included). The table in docs/architecture.md is this one.
ALLOWED: dict[str, frozenset[str]] = {
    "packager.core": frozenset({"packager.core"}),
    "packager.domain": frozenset({"packager.core", "packager.domain"}),
    "projections": frozenset({"packager.core", "packager.domain", "projections"}),
    "packager.adapters": frozenset({"packager.core", "packager.domain", "projections", "packager.adapters"}),
    "packager.service": frozenset(
        {"packager.core", "packager.domain", "packager.adapters", "packager.service"}
    ),
    "packager.http": frozenset(
        {"packager.core", "packager.domain", "projections", "packager.adapters", "packager.http"}
    ),
    "streams": frozenset(
        {
            "packager.core",
            "packager.domain",
            "projections",
            "packager.adapters",
            "packager.service",
            "streams",
        }
    ),
    "packager.cli": frozenset(
        {
            "packager.core",
            "packager.domain",
            "projections",
            "packager.adapters",
            "packager.service",
            "packager.http",
            "streams",
            "packager.cli",
            "packager.dev",
        }
    ),
    "packager.dev": frozenset({"packager.core", "packager.domain", "packager.dev"}),
}

# Outside libraries a layer must not import. The domain and the folds stay pure (no network, no Faust), so
# they test without a broker and the replay tool can run them anywhere; only `streams` (and the command line
# that starts it) may touch Faust.
_NETWORK = frozenset({"aiohttp", "aiokafka", "aiosmtplib", "faust", "mode", "prometheus_client"})
_FAUST = frozenset({"faust", "mode"})
FORBIDDEN: dict[str, frozenset[str]] = {
    "packager.core": _NETWORK,
    "packager.domain": _NETWORK,
    "projections": _NETWORK,
    "packager.adapters": _FAUST,
    "packager.service": _FAUST,
    "packager.http": _FAUST,
    "packager.dev": _FAUST,
}

# `packager/__init__.py` imports nothing and counts as core; `python -m packager` is the command line.
LAYER_OF_SPECIAL = {"packager": "packager.core", "packager.__main__": "packager.cli"}

MAX_LINES = 500
"""What counts: physical lines (`wc -l`), blank lines, comments and docstrings included; data files aside."""


@dataclass(frozen=True)
class Module:
    """A module of the three packages: its dotted name, its file, and whether it is a package's __init__."""

    name: str
    path: Path
    is_package: bool


def modules() -> dict[str, Module]:
    """Every module of the three packages, by dotted name."""
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, path, is_package)
    return found


def _imported_names(module: Module, tree: ast.AST, known: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import statement, at any depth; `from X import y` names X.y if
    that is a module, else X."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if candidate in known else base), node.lineno


@dataclass(frozen=True)
class Import:
    """One import statement: the module it is in, the module it imports, and its line."""

    source: str
    target: str
    line: int


def import_graph() -> tuple[dict[str, Module], list[Import], list[Import]]:
    """(modules, imports between them, imports of outside libraries) read from the source."""
    known = modules()
    internal: list[Import] = []
    external: list[Import] = []
    for module in known.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        for target, line in _imported_names(module, tree, known):
            top = target.split(".")[0]
            if top in PACKAGES:
                # `import packager.domain.events` names a module; a name from a package resolves above.
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                internal.append(Import(module.name, target, line))
            elif top not in sys.stdlib_module_names:
                external.append(Import(module.name, top, line))
    return known, internal, external


def layer_of(name: str) -> str | None:
    """The layer a module belongs to: the longest layer name it sits in."""
    if name in LAYER_OF_SPECIAL:
        return LAYER_OF_SPECIAL[name]
    matches = [layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def _where(module: str, line: int) -> str:
    path = modules()[module].path.relative_to(ROOT)
    return f"{path}:{line}"


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        # Tarjan's algorithm, iterative so a deep graph cannot hit the recursion limit.
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    cycles.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return cycles


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_the_graph_sees_imports_inside_functions() -> None:
    _, internal, _ = import_graph()
    # packager/cli/main.py imports the worker's modules only inside the function that starts a worker.
    assert any(i.source == "packager.cli.main" and i.target == "streams.app" for i in internal)


def test_no_import_cycles() -> None:
    known, internal, _ = import_graph()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for imp in internal:
        edges[imp.source].add(imp.target)
    cycles = find_cycles(edges)
    described = []
    for cycle in cycles:
        members = set(cycle)
        lines = {
            f"  {imp.source} -> {imp.target} ({_where(imp.source, imp.line)})": None
            for imp in internal
            if imp.source in members and imp.target in members
        }
        described.append("\n".join(lines))
    assert not cycles, "Import cycles:\n" + "\n\n".join(described)


def test_every_module_belongs_to_a_layer() -> None:
    homeless = sorted(name for name in modules() if layer_of(name) is None)
    assert not homeless, (
        f"Modules outside every layer: {homeless}. Put each in one of {sorted(ALLOWED)} "
        "(docs/architecture.md says which holds what)."
    )


def test_imports_follow_the_allowed_directions() -> None:
    _, internal, _ = import_graph()
    wrong = []
    for imp in internal:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is None or target is None:
            continue  # reported by test_every_module_belongs_to_a_layer
        if target not in ALLOWED[source]:
            wrong.append(f"{_where(imp.source, imp.line)}: {source} may not import {imp.target} ({target})")
    assert not wrong, "Imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_pure_layers_import_no_network_or_faust_library() -> None:
    _, _, external = import_graph()
    wrong = [
        f"{_where(imp.source, imp.line)}: {layer} may not import {imp.target}"
        for imp in external
        if (layer := layer_of(imp.source)) is not None and imp.target in FORBIDDEN.get(layer, frozenset())
    ]
    assert not wrong, "Outside libraries a layer must not use:\n" + "\n".join(wrong)


def test_module_names_are_unique() -> None:
    """A file name says which module it is: no two modules share one (`jobs.py`, `ops.py` once did)."""
    by_name: dict[str, list[str]] = {}
    for module in modules().values():
        if not module.is_package:
            by_name.setdefault(module.path.name, []).append(str(module.path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"Modules sharing a file name: {clashes}"


def line_counts() -> dict[str, int]:
    """Physical lines per module file, by path from the repository root."""
    counts = {}
    for module in modules().values():
        with module.path.open(encoding="utf-8") as handle:
            counts[str(module.path.relative_to(ROOT))] = sum(1 for _ in handle)
    return counts


def test_no_module_is_over_500_lines() -> None:
    too_long = {path: n for path, n in line_counts().items() if n > MAX_LINES}
    assert not too_long, (
        f"Modules over {MAX_LINES} lines: {too_long}. Split them along their seams "
        "(docs/architecture.md, 'Module size')."
    )
