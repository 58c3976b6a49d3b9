"""Session hygiene: every app context ends with the session rolled back and removed.

The seed's handler rolled back on the exception path and returned without
``remove()``, and hid clean-up errors behind ``print`` and bare ``except``.
Here both steps always run, and every failure is logged and counted for the
monitor's "session clean-up errors" alarm.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app

from .db_monitor import get_monitor
from .extensions import db

logger = logging.getLogger(__name__)


def cleanup_session(exc: BaseException | None = None) -> bool:
    """Roll back and remove the current context's session. True if both worked."""
    if not db.session.registry.has():
        return True  # this context never used the database
    clean = True
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - logged with its traceback and counted
        clean = False
        _count_error("rollback", exc)
    try:
        # remove() closes the session: its connection goes back to the pool.
        db.session.remove()
    except Exception:  # noqa: BLE001 - logged with its traceback and counted
        clean = False
        _count_error("remove", exc)
    return clean


def _count_error(step: str, exc: BaseException | None) -> None:
    logger.exception("session clean-up failed at %s (context ended with %r)", step, exc)
    get_monitor(current_app).record_cleanup_error()


def rollback_failed_request(exc: BaseException | None) -> None:
    """An extra layer, as in the seed: undo a failed request's writes as soon
    as the request ends, before the app context does."""
    if exc is not None and db.session.registry.has():
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001 - logged with its traceback and counted
            _count_error("request rollback", exc)


def shutdown_session(exc: BaseException | None) -> None:
    cleanup_session(exc)


def init_app(app: Flask) -> None:
    app.teardown_request(rollback_failed_request)
    app.teardown_appcontext(shutdown_session)
