"""synk's modules are small and import one another without a cycle, imports inside
functions included.

A cycle that a deferred import (one inside a function, or under
``TYPE_CHECKING``) keeps from failing at import time still ties the modules in
it together: none can be read, tested or moved alone. The graph is read from
the source, so it sees every import, whether or not it has run.

An edge: a module that runs ``import a.b`` or ``from a.b import c`` depends on
``a.b`` (its ``__init__`` for a package) and on ``a.b.c`` where that is a
module. A package's ancestors are not edges: every module imports its package
first, which in turn may import its submodules to re-export them
(``synk/__init__.py``).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SYNK = Path(__file__).resolve().parent.parent / "synk"


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (a package by its own)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The modules of `known` that module `name` imports anywhere, each with a line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                out.setdefault(target, node.lineno)
    return out


def graph(known: dict[str, Path]) -> dict[str, dict[str, int]]:
    return {name: imports(name, path, known) for name, path in known.items()}


def knots(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every set of two or more modules that reach one another (a cycle passes through each)."""
    out, seen, back = [], set(), _reversed(edges)
    for start in sorted(edges):
        if start not in seen:
            knot = _reach(edges, start) & _reach(back, start)
            seen |= knot
            if len(knot) > 1:
                out.append(sorted(knot))
    return out


def cycle(edges: dict[str, dict[str, int]], knot: list[str]) -> list[str]:
    """A shortest cycle through the knot's first module: ``[m, ..., m]``."""
    start, inside = knot[0], set(knot)
    before: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            for nxt in sorted(edges[name]):
                if nxt == start:
                    path = [name]
                    while path[-1] != start:
                        path.append(before[path[-1]])
                    return [*reversed(path), start]
                if nxt in inside and nxt not in before:
                    before[nxt] = name
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a knot but on no cycle")


def _reach(edges: dict[str, dict[str, int]], start: str) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def _reversed(edges: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    back: dict[str, dict[str, int]] = {name: {} for name in edges}
    for name, targets in edges.items():
        for target, line in targets.items():
            back[target][name] = line
    return back


def describe(knot: list[str], edges: dict[str, dict[str, int]], known: dict[str, Path]) -> str:
    """One cycle of the knot, each import with its file and line, and the knot's other modules."""
    path = cycle(edges, knot)
    steps = [path[0]]
    for a, b in itertools.pairwise(path):
        steps.append(f"-> {b} ({known[a].relative_to(SYNK.parent)}:{edges[a][b]})")
    others = sorted(set(knot) - set(path))
    return " ".join(steps) + (f"; also in this knot: {', '.join(others)}" if others else "")


def test_no_import_cycle_among_synks_modules():
    known = modules(SYNK)
    edges = graph(known)
    found = knots(edges)
    assert not found, "import cycles among synk's modules:\n" + "\n".join(
        "  " + describe(knot, edges, known) for knot in found
    )


def test_a_cycle_through_a_deferred_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from . import a\n")
    (package / "d.py").write_text("import pkg.a\n")  # reaches the cycle, is not on it
    edges = graph(modules(package))
    assert knots(edges) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycle(edges, ["pkg.a", "pkg.b", "pkg.c"]) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


MOST_LINES = 400  # a module past this holds more than one idea: split it along them


def test_no_module_passes_400_lines():
    found = modules(SYNK)
    assert "synk._src.function" in found, f"no synk package at {SYNK}"
    long = {
        name: lines
        for name, path in found.items()
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert not long, f"modules over {MOST_LINES} lines: {long}"
