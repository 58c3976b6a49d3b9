"""The package's architecture, read from its source with ``ast`` (nothing is imported):

- only the pytest layer (``pytest_layer/``) and the entry modules (``plugin.py``,
  ``hooks.py``) import pytest, anywhere in a module, function bodies included;
- the layers import downwards: the engine, the families, the reports and the stress
  runners never import the pytest layer or the entry modules; the engine knows of the
  families only the seam (``families.base``) and the registry (``families``); the
  reports know no family; a family never imports another family;
- no import cycle between modules (imports that run at import time: not those under
  ``if TYPE_CHECKING:`` nor those inside functions);
- no module over 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.graphs import cycles

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_dbleak"
MAX_LINES = 500
ENTRY = {"pytest_dbleak.plugin", "pytest_dbleak.hooks"}
PYTEST_LAYER = "pytest_dbleak.pytest_layer"
BELOW_PYTEST = (
    "pytest_dbleak.engine",
    "pytest_dbleak.families",
    "pytest_dbleak.reports",
    "pytest_dbleak.stress",
)
# What the engine may know of the families: the seam and the registry.
ENGINE_MAY_IMPORT = {"pytest_dbleak.families", "pytest_dbleak.families.base"}


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (the deepest existing one, for this package's)
    at_import_time: bool  # not under `if TYPE_CHECKING:` and not inside a function
    line: int


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(
    name: str, source: str, known: set[str], *, is_package: bool = False
) -> Iterator[Import]:
    """Every import statement of module `name`, relative ones resolved: ``from a import b``
    is module ``a.b`` when there is one, else ``a``."""
    package = name if is_package else name.rpartition(".")[0]

    def walk(nodes: list[ast.stmt] | list[ast.AST], runtime: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                yield from walk(node.body, False)
                yield from walk(node.orelse, runtime)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(alias.name, runtime, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    yield Import(full if full in known else base, runtime, node.lineno)
            inside = runtime and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            yield from walk(list(ast.iter_child_nodes(node)), inside)

    yield from walk(ast.parse(source).body, True)


def _owner(target: str, known: set[str]) -> str | None:
    """The module of this package that `target` names (``a.b.Name`` -> ``a.b``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(
    found: dict[str, Path], *, at_import_time: bool = False
) -> dict[str, dict[str, int]]:
    """Module -> {module of this package it imports: line}."""
    known = set(found)
    graph: dict[str, dict[str, int]] = {}
    for name, path in found.items():
        edges: dict[str, int] = {}
        source = path.read_text(encoding="utf-8")
        for imp in imports(name, source, known, is_package=path.name == "__init__.py"):
            if at_import_time and not imp.at_import_time:
                continue
            owner = _owner(imp.target, known)
            if owner is not None and owner != name:
                edges.setdefault(owner, imp.line)
        graph[name] = edges
    return graph


def _in(name: str, layer: str) -> bool:
    return name == layer or name.startswith(f"{layer}.")


def _family(name: str) -> str | None:
    """``pytest_dbleak.families.mysql.monitor`` -> ``mysql``; None outside a family."""
    parts = name.split(".")
    if len(parts) > 3 and parts[1] == "families":
        return parts[2]
    return None


FOUND = modules()
GRAPH = import_graph(FOUND)


# -- the checks check ------------------------------------------------------------------------
def test_the_reader_sees_every_kind_of_import() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import pytest\n"
        "from . import sibling\n"
        "from ..engine.errors import DbleakError\n"
        "if TYPE_CHECKING:\n"
        "    from pytest_dbleak.pytest_layer import manager\n"
        "def later():\n"
        "    from _pytest import nodes\n"
    )
    known = {"pkg", "pkg.engine", "pkg.engine.errors", "pkg.layer", "pkg.layer.sibling", "pkg.x"}
    found = {(i.target, i.at_import_time) for i in imports("pkg.layer.mod", source, known)}
    assert found == {
        ("__future__", True),
        ("typing", True),
        ("pytest", True),
        ("pkg.layer.sibling", True),
        ("pkg.engine.errors", True),
        ("pytest_dbleak.pytest_layer", False),
        ("_pytest", False),
    }


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_the_packages() -> None:
    # Non-empty, and it resolves what the checks below rely on.
    assert len(FOUND) > 40
    assert "pytest_dbleak.engine.tracking" in GRAPH["pytest_dbleak.engine.detector"]
    assert "pytest_dbleak.families.base" in GRAPH["pytest_dbleak.engine.detector"]
    assert "pytest_dbleak.pytest_layer.manager" in GRAPH["pytest_dbleak.plugin"]


# -- the architecture ------------------------------------------------------------------------
def test_only_the_pytest_layer_and_the_entry_modules_import_pytest() -> None:
    known = set(FOUND)
    offenders = [
        f"{name}:{imp.line} imports {imp.target}"
        for name, path in FOUND.items()
        if not _in(name, PYTEST_LAYER) and name not in ENTRY
        for imp in imports(name, path.read_text(encoding="utf-8"), known)
        if imp.target.split(".")[0] in ("pytest", "_pytest")
    ]
    assert offenders == []
    # ...and the pytest layer does (the check would pass on a package without it).
    assert any(
        imp.target == "pytest"
        for imp in imports(
            "pytest_dbleak.pytest_layer.manager",
            FOUND["pytest_dbleak.pytest_layer.manager"].read_text(encoding="utf-8"),
            known,
        )
    )


def test_no_layer_below_pytest_imports_the_pytest_layer_or_the_entry_modules() -> None:
    above = (PYTEST_LAYER, *ENTRY, "pytest_dbleak.cli")
    offenders = [
        f"{name}:{line} imports {target}"
        for name, edges in GRAPH.items()
        if any(_in(name, layer) for layer in BELOW_PYTEST)
        for target, line in edges.items()
        if any(_in(target, layer) for layer in above)
    ]
    assert offenders == []


def test_the_engine_knows_of_the_families_only_the_seam_and_the_registry() -> None:
    engine = [name for name in GRAPH if _in(name, "pytest_dbleak.engine")]
    assert engine
    offenders = [
        f"{name}:{line} imports {target}"
        for name in engine
        for target, line in GRAPH[name].items()
        if _in(target, "pytest_dbleak.families") and target not in ENGINE_MAY_IMPORT
    ]
    assert offenders == []


def test_the_reports_know_no_family() -> None:
    offenders = [
        f"{name}:{line} imports {target}"
        for name, edges in GRAPH.items()
        if _in(name, "pytest_dbleak.reports")
        for target, line in edges.items()
        if _in(target, "pytest_dbleak.families")
    ]
    assert offenders == []


def test_a_family_never_imports_another_family() -> None:
    crossing = {
        (name, target)
        for name, edges in GRAPH.items()
        for target in edges
        if _family(name) and _family(target) and _family(name) != _family(target)
    }
    assert crossing == set()


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph(FOUND, at_import_time=True)) == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, id=path.relative_to(PACKAGE).as_posix())
        for path in sorted(PACKAGE.rglob("*.py"))
    ],
)
def test_no_module_is_over_500_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines"
