"""Background jobs, and the one way to run them: inside an app context of the
application that already exists (never ``create_app()`` per run, which builds
a new engine each time and leaks its pool)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from . import regressions
from .db_monitor import get_monitor
from .errors import one_line
from .extensions import db
from .services import dispatch, notifications, system_log
from .session_cleanup import cleanup_session

logger = logging.getLogger(__name__)

JobBody = Callable[[], dict[str, Any]]


class UnknownJob(KeyError):
    pass


def retry_failed_notifications() -> dict[str, Any]:
    report = notifications.deliver_due(current_app.config["NOTIFICATION_BATCH_SIZE"])
    return {**report.as_dict(), "due": notifications.count_due()}


def mark_permanently_failed() -> dict[str, Any]:
    marked = notifications.give_up_exhausted()
    if marked:
        system_log.record("warning", "notifications", f"{marked} notification(s) gave up")
    db.session.commit()
    return {"marked": marked}


def cleanup_old_logs() -> dict[str, Any]:
    deleted = system_log.purge_older_than(current_app.config["SYSTEM_LOG_RETENTION_DAYS"])
    db.session.commit()
    return {"deleted": deleted, "remaining": system_log.count()}


def check_request_timeouts() -> dict[str, Any]:
    timed_out = dispatch.time_out_stale_requests(current_app.config["REQUEST_TIMEOUT_SECONDS"])
    return {"timed_out": len(timed_out), "pending": dispatch.count_pending()}


JOBS: dict[str, JobBody] = {
    job.__name__: job
    for job in (
        retry_failed_notifications,
        mark_permanently_failed,
        cleanup_old_logs,
        check_request_timeouts,
    )
}


def run_job(app: Flask, name: str) -> dict[str, Any]:
    """Run one job once, inside an app context of ``app``; clean up always."""
    if name not in JOBS:
        raise UnknownJob(name)
    body = regressions.job_body(app, name) or JOBS[name]
    runner = regressions.job_runner(app)
    if runner is not None:
        return runner(app, name, body)
    with app.app_context():
        error: BaseException | None = None
        try:
            result = body()
            logger.info("%s finished: %s", name, result)
            return result
        except SQLAlchemyError as exc:
            # Database trouble (server down, time-out) is one line in the
            # log; a traceback would add nothing.
            error = exc
            logger.error("%s failed: %s", name, one_line(exc))
            if isinstance(exc, PoolTimeoutError):
                get_monitor(app).record_timeout()
            raise
        except Exception as exc:
            error = exc
            logger.exception("%s failed", name)
            raise
        finally:
            # The context's teardown would do this too; doing it here lets
            # the job say whether it worked.
            if cleanup_session(error):
                logger.info("%s: Session cleaned up successfully", name)
            else:
                logger.error("%s: session clean-up failed", name)
