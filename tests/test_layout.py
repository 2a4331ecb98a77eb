"""The package's house plan, checked: few top-level modules, imports one way, no cycles.

These read the source with ``ast`` (function-level imports count), so a new module that
breaks a rule fails here rather than in a reviewer's head.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "relay"

# Lower layers never import higher ones. A subpackage may import its own layer and below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 0,
    "storage": 1,
    "mail": 1,
    "upstream": 2,
    "money": 3,
    "identity": 3,
    "admission": 4,
    "cluster": 4,
    "usage": 4,
    "jobs": 4,
    "payments": 5,
    "alerts": 5,
    "metrics": 5,
    "state": 6,
    "http": 7,
    "api": 8,
    "admin": 8,
    "console": 8,
    # The app and what its lifespan opens, starts and closes.
    "app": 9,
    "lifespan": 9,
    "state_lifecycle": 9,
    "cluster_jobs": 9,
    "server": 10,
    "cli": 11,
}
# Known upward edges, each with its reason; the list may only shrink.
ALLOWED_UPWARD = {
    # A route's Model carries its price for the handlers that quote it.
    ("upstream", "money"),
    # jobs/periodic.py is a helper every periodic job uses, whatever its layer.
    ("identity", "jobs"),
    ("usage", "jobs"),
    # The lifespan-built payments runtime hangs off the app's state like every other part.
    ("payments", "state"),
    ("alerts", "state"),
    ("metrics", "state"),
    # The /metrics route and its second listener live beside the metrics they render.
    ("metrics", "http"),
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def owner(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str | None]]:
    """(module imported, name taken from it) for every relay import, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relay"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    yield full, None
                else:
                    target = owner(node.module, known)
                    if target:
                        yield target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name, known) if alias.name.startswith("relay") else None
                if target:
                    yield target, None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports_of(path, known):
            if target != name:
                edges[name].add(target)
    return edges


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_at_most_ten_modules_sit_directly_in_relay() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(flat) <= 10, flat


def test_no_import_cycle_anywhere_in_relay() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_imports_point_one_way_between_subpackages() -> None:
    upward = set()
    for source, targets in graph().items():
        for target in targets:
            a, b = layer(source), layer(target)
            if a in LAYERS and b in LAYERS and a != b and LAYERS[b] > LAYERS[a]:
                if (a, b) not in ALLOWED_UPWARD:
                    upward.add(f"{source} -> {target}")
    assert not upward, sorted(upward)


def test_no_module_imports_another_modules_underscore_names() -> None:
    known = modules()
    offenders = []
    for name, path in known.items():
        aliases: dict[str, str] = {}
        tree = ast.parse(path.read_text())
        for target, taken in imports_of(path, known):
            if taken and taken.startswith("_") and target != name:
                offenders.append(f"{name} imports {target}.{taken}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relay"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
            ):
                offenders.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, offenders


def test_every_design_reference_points_into_docs_architecture() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    sections = set(re.findall(r"^#+ §(\d+(?:\.\d+)*)", doc, re.M))
    dangling = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        text = path.read_text()
        for match in re.finditer("design" + " §", text):  # split: this file is read too
            dangling.append(f"{path.relative_to(ROOT)}: {text[match.start() : match.end() + 8]!r}")
        for match in re.finditer(r"architecture\.md §(\d+(?:\.\d+)*)", text):
            if match.group(1) not in sections:
                dangling.append(f"{path.relative_to(ROOT)}: §{match.group(1)} is not a section")
    assert sections, "docs/architecture.md numbers its sections (## §N ...)"
    assert not dangling, dangling
