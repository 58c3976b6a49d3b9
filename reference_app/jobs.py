"""Background jobs, and the one way to run them: inside an app context of the
application that already exists (never ``create_app()`` per run, which builds
a new engine each time and leaks its pool).

The factory gives each app its own ``JobSet`` (``init_app``): the bodies by
name and the runner that wraps them. ``run_job`` looks both up there, so a
caller that builds the app can swap a body or the runner without this module
knowing about it (the leak tests install the seed's bugs that way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .db_monitor import get_monitor
from .errors import one_line
from .extensions import db
from .services import dispatch, notifications, system_log
from .session_cleanup import cleanup_session

logger = logging.getLogger(__name__)

JobBody = Callable[[], dict[str, Any]]
JobRunner = Callable[[Flask, str, JobBody], dict[str, Any]]

_KEY = "reference_app.jobs"


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


def run_in_job_context(app: Flask, name: str, body: JobBody) -> dict[str, Any]:
    """Run ``body`` inside an app context of ``app``; clean up always."""
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


@dataclass
class JobSet:
    """One app's jobs: the body of each by name, and how a run is wrapped."""

    bodies: dict[str, JobBody] = field(default_factory=lambda: dict(JOBS))
    runner: JobRunner = run_in_job_context


def init_app(app: Flask) -> None:
    app.extensions[_KEY] = JobSet()


def get_jobs(app: Flask) -> JobSet:
    jobs: JobSet = app.extensions[_KEY]
    return jobs


def run_job(app: Flask, name: str) -> dict[str, Any]:
    """Run one job of ``app`` once."""
    jobs = get_jobs(app)
    if name not in jobs.bodies:
        raise UnknownJob(name)
    return jobs.runner(app, name, jobs.bodies[name])
