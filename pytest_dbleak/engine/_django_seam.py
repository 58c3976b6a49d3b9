"""The Django and pytest-django internals the Django support relies on, in one place.

No pytest import. Checked on Django 5.2.19, pytest-django 4.14.0 and asgiref 3.13.0.
What is used:

- pytest-django's database blocker: the object on ``config.stash[blocking_manager_key]``
  and its ``_real_ensure_connection`` (the genuine ``BaseDatabaseWrapper.ensure_connection``
  it swaps in and out, for every thread at once);
- Django's live server: ``LiveServerThread`` and ``ThreadedWSGIServer.process_request_thread``,
  the method each request thread runs;
- asgiref's ``SyncToAsync.thread_handler`` (asgiref 3.13.0): what the executor threads that
  run Django's async ORM calls (``acount()``, ``sync_to_async``) run them in (a frame).

A shape that no longer fits stops the run with one line naming these versions.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from pytest_dbleak.engine.errors import DbleakError

CHECKED_ON = "Django 5.2.19, pytest-django 4.14.0, asgiref 3.13.0"


def misfit(what: str) -> DbleakError:
    return DbleakError(
        f"the Django support does not fit this Django, pytest-django or asgiref ({what}); "
        f"it was checked on {CHECKED_ON}"
    )


def blocker(config: Any) -> Any | None:
    """pytest-django's database blocker of this run, or None without pytest-django."""
    try:
        from pytest_django.plugin import blocking_manager_key
    except ImportError:
        return None
    manager = config.stash.get(blocking_manager_key, None)
    if manager is not None and not hasattr(manager, "_real_ensure_connection"):
        raise misfit("its database blocker has no _real_ensure_connection")
    return manager


def real_ensure_connection(manager: Any) -> Callable[[Any], None]:
    """The genuine ``ensure_connection``, which the blocker swaps out while blocking."""
    real = manager._real_ensure_connection
    if real is None:
        manager._dj_db_wrapper  # noqa: B018 - the property records the genuine method
        real = manager._real_ensure_connection
    if not callable(real):
        raise misfit("its database blocker holds no ensure_connection")
    return real


class KeptThreads:
    """Tells whether the current thread is one Django's machinery keeps for itself: the
    live server's, or an asgiref executor thread running async ORM calls."""

    def __init__(self) -> None:
        try:
            from asgiref.sync import SyncToAsync
            from django.core.servers.basehttp import ThreadedWSGIServer
            from django.test.testcases import LiveServerThread

            self._thread_class: type = LiveServerThread

            # A frame, not the executor's thread set: a new worker thread runs its first
            # call before the executor records it.
            self._codes = (
                ThreadedWSGIServer.process_request_thread.__code__,
                SyncToAsync.thread_handler.__code__,
            )
        except (ImportError, AttributeError) as exc:
            raise misfit(f"no live server or async ORM thread: {exc}") from None

    def current(self) -> bool:
        """The live server's own thread, one it runs a request in, or the async ORM's."""
        if isinstance(threading.current_thread(), self._thread_class):
            return True
        frame: Any = sys._getframe(1)
        while frame is not None:
            if any(frame.f_code is code for code in self._codes):
                return True
            frame = frame.f_back
        return False
