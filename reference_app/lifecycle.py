"""Releasing what an application holds, for every exit path: a command, the
server, a test's teardown. An app that is never released keeps its pool's
connections open on the server."""

from __future__ import annotations

import logging

from flask import Flask

from .extensions import db
from .scheduler import stop_scheduler
from .tasks import get_tasks

logger = logging.getLogger(__name__)


def shutdown_app(app: Flask) -> None:
    """Stop the scheduler, close Socket.IO clients and wait for their
    disconnect tasks, then dispose every engine. Safe to call twice."""
    stop_scheduler(app)
    _close_sockets(app)
    tasks = get_tasks(app)
    if not tasks.wait_idle(app.config["SHUTDOWN_TASK_TIMEOUT_SECONDS"]):
        logger.warning("%d background task(s) still running at shutdown", tasks.running)
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def _close_sockets(app: Flask) -> None:
    # Closing them here runs the disconnect handlers while the engine still
    # exists; their tasks are awaited before the disposal.
    server = getattr(app.wsgi_app, "engineio_app", None)
    eio = getattr(server, "eio", None)
    if eio is not None and eio.sockets:
        eio.disconnect()
