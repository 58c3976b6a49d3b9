"""pytest-dbleak: fail the test that leaks a database connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_dbleak.engine.results import CheckResult, Leak
    from pytest_dbleak.families.base import ServerInfo
    from pytest_dbleak.pytest_layer.fixtures import DbleakHandle, PoolStatus, Snapshot

__all__ = ["CheckResult", "DbleakHandle", "Leak", "PoolStatus", "ServerInfo", "Snapshot"]
__version__ = "0.1.0"

# Imported on first use: `python -m pytest_dbleak merge` runs without pytest, and the
# plugin's own start does not pay for modules a run may never need.
_HOMES = {
    "CheckResult": "engine.results",
    "Leak": "engine.results",
    "ServerInfo": "families.base",
    "DbleakHandle": "pytest_layer.fixtures",
    "PoolStatus": "pytest_layer.fixtures",
    "Snapshot": "pytest_layer.fixtures",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{home}", __name__), name)
