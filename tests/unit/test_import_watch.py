"""The driver import hook, on real packages imported from a temporary folder."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbleak.engine.import_watch import ImportWatch, imported


@pytest.fixture
def packages(tmp_path: Path) -> Iterator[Path]:
    """`outer` imports `inner` in its ``__init__`` before defining its class (as a driver
    package that imports another driver does)."""
    (tmp_path / "dbleak_iw_outer").mkdir()
    (tmp_path / "dbleak_iw_outer" / "__init__.py").write_text(
        "import dbleak_iw_inner\n\nclass Connection:\n    pass\n"
    )
    (tmp_path / "dbleak_iw_inner").mkdir()
    (tmp_path / "dbleak_iw_inner" / "__init__.py").write_text("class Connection:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("dbleak_iw_outer", "dbleak_iw_inner"):
            sys.modules.pop(name, None)


def test_each_package_counts_as_imported_once_it_has_run_and_not_while_it_runs(
    packages: Path,
) -> None:
    seen: list[tuple[bool, bool]] = []

    def on_import() -> None:
        seen.append((imported("dbleak_iw_outer"), imported("dbleak_iw_inner")))

    watch = ImportWatch(["dbleak_iw_outer", "dbleak_iw_inner"], on_import)
    watch.install()
    try:
        outer = importlib.import_module("dbleak_iw_outer")
    finally:
        watch.uninstall()
    # inner finished first, while outer's __init__ was still running (no class yet);
    # then outer finished: both done.
    assert seen == [(False, True), (True, True)]
    assert outer.Connection.__name__ == "Connection"
    assert watch not in sys.meta_path


def test_a_package_imported_again_is_not_taken_for_done_while_it_runs_again(
    packages: Path,
) -> None:
    seen: list[bool] = []
    watch = ImportWatch(["dbleak_iw_inner"], lambda: seen.append(imported("dbleak_iw_inner")))
    watch.install()
    try:
        importlib.import_module("dbleak_iw_inner")
        del sys.modules["dbleak_iw_inner"]
        (packages / "dbleak_iw_inner" / "__init__.py").write_text(
            "from dbleak_iw_probe import during\n\nclass Connection:\n    pass\n"
        )
        (packages / "dbleak_iw_probe.py").write_text(
            "from pytest_dbleak.engine.import_watch import imported\n"
            "during = imported('dbleak_iw_inner')\n"
        )
        importlib.invalidate_caches()
        again = importlib.import_module("dbleak_iw_inner")
    finally:
        watch.uninstall()
        sys.modules.pop("dbleak_iw_probe", None)
    assert again.during is False
    assert seen == [True, True]


def test_a_failing_callback_never_breaks_the_users_import(
    packages: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def on_import() -> None:
        raise RuntimeError("tracer bug")

    watch = ImportWatch(["dbleak_iw_inner"], on_import)
    watch.install()
    try:
        inner = importlib.import_module("dbleak_iw_inner")
    finally:
        watch.uninstall()
    assert inner.Connection.__name__ == "Connection"
    assert "tracing dbleak_iw_inner after its import failed" in caplog.text
