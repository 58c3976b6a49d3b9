"""Stress runners behind pytest-dbleak's stress markers and fixtures.

A connection leak that happens on one run in twenty, or only when two requests
overlap, rarely shows in a single test call.  These runners repeat the code under
test many times, concurrently, against real servers on the loopback interface, and
do not return until everything they started has finished -- so that the leak check
that follows sees the final state, not a request thread that is still tearing down.

* :class:`JobRunner` (:mod:`.jobs`) runs plain callables (scheduled jobs, CLI
  commands) many times from a thread pool.
* :class:`SocketChurnRunner` (:mod:`.socket_churn`) connects and disconnects many
  real Socket.IO clients to a Flask-SocketIO application.
* :class:`HttpLoadRunner` (:mod:`.http_load`) sends many concurrent HTTP requests
  to a WSGI application (``ab -n N -c C`` style).

:func:`serve_wsgi` (:mod:`.wsgi`) is the one way they start and stop a loopback
server; :mod:`._upstream` holds every upstream internal and workaround the Socket.IO
churn needs.  Importing this package needs only the standard library: each name is
imported from its module on first use, so Werkzeug (``serve_wsgi``, the HTTP load)
and python-socketio (the churn) are needed only by what uses them (the ``stress``
extra).  ``SocketChurn`` and ``HttpLoad`` are the runners' former names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_dbleak.stress._common import (
    HttpLoadResult,
    LatencyMs,
    SocketChurnError,
    SocketChurnResult,
    StressError,
    StressResult,
)
from pytest_dbleak.stress.jobs import JobRunner

if TYPE_CHECKING:
    from pytest_dbleak.stress.http_load import HttpLoadRunner
    from pytest_dbleak.stress.socket_churn import SocketChurnRunner
    from pytest_dbleak.stress.wsgi import serve_wsgi

    SocketChurn = SocketChurnRunner
    HttpLoad = HttpLoadRunner

__all__ = [
    "HttpLoad",
    "HttpLoadResult",
    "HttpLoadRunner",
    "JobRunner",
    "LatencyMs",
    "SocketChurn",
    "SocketChurnError",
    "SocketChurnResult",
    "SocketChurnRunner",
    "StressError",
    "StressResult",
    "serve_wsgi",
]

# name -> (module, attribute), imported on first access (PEP 562).
_LAZY = {
    "HttpLoadRunner": ("http_load", "HttpLoadRunner"),
    "HttpLoad": ("http_load", "HttpLoadRunner"),
    "SocketChurnRunner": ("socket_churn", "SocketChurnRunner"),
    "SocketChurn": ("socket_churn", "SocketChurnRunner"),
    "serve_wsgi": ("wsgi", "serve_wsgi"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value
