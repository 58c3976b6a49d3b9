"""Tell the tracer the moment a driver package has been imported.

No pytest import. The tracer looks for imported drivers before every test's window
(``Tracker.mark``); a driver first imported later - inside a session fixture that then
builds a pool with it, inside a test - would otherwise be traced only from the next
window on, and whatever it made before (a driver pool a fixture owns) would never be
known: its idle connections would look like connections nobody opened. An import hook
(a ``sys.meta_path`` finder that only wraps the loaders of the named top-level packages)
calls back once such a package has finished executing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


# Packages our loader has finished executing: importlib marks a module as still being
# initialised until exec_module returns, which is after the pass we call for.
_executed: set[str] = set()


def imported(package: str) -> bool:
    """`package` is in ``sys.modules`` and done: while its ``__init__`` still runs (it
    imports a driver whose import calls for a pass) its classes may not exist yet, and a
    pass would take them for gone for good.

    "Still running" is read as importlib itself reads it (``__spec__._initializing``,
    set around exec_module by importlib._bootstrap; CPython 3.9-3.13).
    """
    module = sys.modules.get(package)
    if module is None:
        return False
    if package in _executed:
        return True
    spec = getattr(module, "__spec__", None)
    return not getattr(spec, "_initializing", False)


class _Loader(importlib.abc.Loader):
    """The package's own loader, and a call back once its module has executed."""

    def __init__(self, loader: Any, done: Callable[[], None]) -> None:
        self._loader = loader
        self._done = done

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        _executed.discard(module.__name__)  # imported again (a test's reload): not yet
        self._loader.exec_module(module)
        _executed.add(module.__name__)  # done, though importlib says so only once we return
        try:
            self._done()
        except Exception:  # tracing must never break the user's import: said, not raised
            log.warning(
                "dbleak: tracing %s after its import failed", module.__name__, exc_info=True
            )

    def __getattr__(self, name: str) -> Any:  # is_package, get_code, resource readers ...
        return getattr(self._loader, name)


class ImportWatch(importlib.abc.MetaPathFinder):
    """Calls `on_import` after any of `packages` (top-level names) is imported."""

    def __init__(self, packages: Iterable[str], on_import: Callable[[], None]) -> None:
        self._packages = frozenset(packages)
        self._on_import = on_import
        self._local = threading.local()  # our own look-up, not to be answered by us again

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._packages or getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _Loader(spec.loader, self._on_import)
                    return spec
            return None
        finally:
            self._local.busy = False

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
