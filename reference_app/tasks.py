"""Background tasks started from Socket.IO handlers, each inside an app context.

The tracker lets ``shutdown_app`` wait for tasks still running before it
disposes the engine; a task that outlived the disposal would open a fresh
connection on the new pool and leave it behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from .extensions import socketio

logger = logging.getLogger(__name__)

Runner = Callable[..., Any]


def run_in_app_context(app: Flask, fn: Callable[..., Any], *args: Any) -> Any:
    # Leaving the context runs the teardown handlers: rollback and remove().
    with app.app_context():
        return fn(*args)


class BackgroundTasks:
    """Counts the running tasks; ``runner`` is how each one is wrapped (a seam:
    whoever builds the app may replace it)."""

    def __init__(self, runner: Runner = run_in_app_context) -> None:
        self.runner = runner
        self._running = 0
        self._idle = threading.Condition()

    def start(self, app: Flask, fn: Callable[..., Any], *args: Any) -> Any:
        with self._idle:
            self._running += 1
        try:
            return socketio.start_background_task(self._body, app, self.runner, fn, *args)
        except BaseException:
            self._finished()
            raise

    def _body(self, app: Flask, runner: Runner, fn: Callable[..., Any], *args: Any) -> None:
        try:
            runner(app, fn, *args)
        except Exception:
            logger.exception("background task %s failed", fn.__name__)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    @property
    def running(self) -> int:
        return self._running

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task runs; False if some still run after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout=timeout)


def get_tasks(app: Flask) -> BackgroundTasks:
    tasks: BackgroundTasks = app.extensions["reference_app.tasks"]
    return tasks
