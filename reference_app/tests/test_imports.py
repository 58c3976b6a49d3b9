"""The import graph is one-way: no cycle anywhere in the repository, the factory
on top of the reference app, and nothing of the tests inside production code."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.graphs import cycles

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {"build", "dist", "node_modules"}


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__), for every .py file."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        folders = path.relative_to(root).parts[:-1]
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in folders):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        if parts:
            found[".".join(parts)] = (path, is_package)
    return found


def imported_names(path: Path, package: str) -> Iterator[tuple[str, str]]:
    """(module, name) for every name a module imports, relative imports
    resolved: ``from a import b`` is ("a", "a.b"), ``import a.b`` is ("a.b", "a.b")."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield from ((base, f"{base}.{alias.name}") for alias in node.names)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports: ``from a import b``
    imports the module ``a.b`` if there is one, else ``a``; ``import a.b.c``
    the deepest of them that exists."""
    found = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in found.items():
        package = name if is_package else name.rpartition(".")[0]
        targets = {
            full if full in found else resolve(base) for base, full in imported_names(path, package)
        }
        graph[name] = {target for target in targets if target and target != name}
    return graph


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_resolves_relative_imports() -> None:
    graph = import_graph(ROOT)
    assert "reference_app.jobs" in graph["reference_app.cli"]
    assert "reference_app.extensions" in graph["reference_app.websocket.events"]
    assert "reference_app" in graph["reference_app.tests.regressions"]  # create_app
    assert "reference_app.session_cleanup" in graph["reference_app.factory"]


def test_no_import_cycle_anywhere_in_the_repository() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_nothing_below_the_factory_imports_it() -> None:
    graph = import_graph(ROOT)
    production = {name for name in graph if name.startswith("reference_app.")}
    production -= {name for name in graph if name.startswith("reference_app.tests")}
    top = {"reference_app", "reference_app.__main__", "reference_app.factory"}
    for name in sorted(production - top):
        assert not graph[name] & top, f"{name} imports {graph[name] & top}"
        assert not any(target.startswith("reference_app.tests") for target in graph[name]), name


def test_no_production_module_knows_the_seed_regressions() -> None:
    for path in sorted((ROOT / "reference_app").rglob("*.py")):
        if "tests" in path.relative_to(ROOT).parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert "regression" not in text.lower(), path
