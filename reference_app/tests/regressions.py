"""The seed's original connection bugs, installed on a built app from outside.

Test-only: the production code has no switch for them. ``install(app, names)``
replaces pieces of a finished app through the seams the factory exposes (the
app's ``JobSet`` of job bodies and runner, the background tasks' runner, the
app's teardown functions). The leak tests name them in the environment
variable ``REFERENCE_APP_REGRESSIONS`` (comma-separated), read by the
``make_app`` fixture. Each is a small, faithful reproduction of one bug the
seed describes, so that a leak detector can be shown to catch it.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from flask.ctx import AppContext
from sqlalchemy import select

from reference_app import create_app, session_cleanup
from reference_app.extensions import db
from reference_app.jobs import JobBody, get_jobs
from reference_app.models import Notification, utcnow
from reference_app.services import notifications
from reference_app.tasks import get_tasks

logger = logging.getLogger(__name__)

ENV_VAR = "REFERENCE_APP_REGRESSIONS"

REGRESSIONS: dict[str, str] = {
    "no_request_cleanup": (
        "no session clean-up per request (and Flask-SQLAlchemy's own teardown "
        "removed): each request's session keeps its connection checked out"
    ),
    "job_without_app_context": (
        "jobs push their own app context and never pop it: the session, its "
        "transaction and its connection are never released"
    ),
    "job_create_app_per_run": (
        "jobs call create_app() on every run: a new engine and pool each time, "
        "never disposed, idle connections left open on the server"
    ),
    "disconnect_thread_without_cleanup": (
        "the driver-disconnect background task runs in a context that is never "
        "popped: its session keeps its connection checked out"
    ),
    "long_running_job_session": (
        "retry_failed_notifications holds one session (one transaction, one "
        "connection, one snapshot) for its whole run, sends included"
    ),
}

# What the seed's code kept alive: contexts pushed and never popped, and apps
# built per run. Holding them here makes the leak independent of when the
# garbage collector happens to run.
_NEVER_POPPED: list[AppContext] = []
_APPS_BUILT_PER_RUN: list[Flask] = []


class UnknownRegression(ValueError):
    pass


def parse_regressions(value: str | Iterable[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else value
    names = frozenset(item.strip() for item in items if item and item.strip())
    unknown = sorted(names - REGRESSIONS.keys())
    if unknown:
        known = ", ".join(REGRESSIONS)
        raise UnknownRegression(f"unknown regression(s): {', '.join(unknown)}; known: {known}")
    return names


def regressions_from_env() -> frozenset[str]:
    return parse_regressions(os.environ.get(ENV_VAR))


# -- no_request_cleanup ------------------------------------------------------


def defeat_request_cleanup(app: Flask) -> None:
    """Seed bug 1: nothing removes the session when a request ends.

    The app's own clean-up handlers are taken away, and so is the
    ``session.remove()`` teardown Flask-SQLAlchemy 3 registers, so that the
    leak is real: the scoped session registry keeps every request's session,
    and its open transaction keeps the connection checked out.
    """
    extension = app.extensions["sqlalchemy"]
    removed = {extension._teardown_session, session_cleanup.shutdown_session}
    app.teardown_appcontext_funcs[:] = [
        func for func in app.teardown_appcontext_funcs if func not in removed
    ]
    requests = app.teardown_request_funcs.get(None, [])
    requests[:] = [func for func in requests if func != session_cleanup.rollback_failed_request]


# -- job_without_app_context and disconnect_thread_without_cleanup -----------


def run_in_context_never_popped(app: Flask, fn: Callable[..., Any], *args: Any) -> Any:
    """Push an app context, run ``fn`` and never pop it, as the seed's jobs and
    threads did: no teardown runs, so the session is never removed.

    The push happens in a copy of the caller's contextvars, so the caller's
    thread does not find itself inside this context afterwards.
    """
    context = app.app_context()
    _NEVER_POPPED.append(context)

    def body() -> Any:
        context.push()
        return fn(*args)

    return contextvars.copy_context().run(body)


def run_job_without_cleanup(app: Flask, name: str, body: JobBody) -> dict[str, Any]:
    result: dict[str, Any] = run_in_context_never_popped(app, body)
    return result


# -- job_create_app_per_run --------------------------------------------------


def run_job_in_new_app(app: Flask, name: str, body: JobBody) -> dict[str, Any]:
    """The seed's "fixed" job: ``app = create_app()`` then ``with
    app.app_context():``. The session is cleaned, but every run builds a new
    engine whose pooled connection stays open on the server."""
    fresh = create_app(dict(app.config))
    _APPS_BUILT_PER_RUN.append(fresh)
    with fresh.app_context():
        result = body()
    # The seed's version did clean its session, and said so in the jobs' log.
    logging.getLogger("reference_app.jobs").info("%s: Session cleaned up successfully", name)
    return result


# -- long_running_job_session ------------------------------------------------


def retry_notifications_in_one_session() -> dict[str, Any]:
    """The seed's long-running job: one session for the whole run.

    Every send happens while the transaction that read the batch is still
    open, so the connection is checked out for as long as the sends take and
    the job keeps reading the snapshot it started with.
    """
    sender = notifications.get_sender()
    rows = db.session.scalars(select(Notification).where(notifications.due_filter(utcnow()))).all()
    sent = failed = 0
    for row in rows:
        error = notifications.attempt_send(sender, notifications.to_message(row))
        notifications.record_attempt(row.id, row.attempts + 1, error)
        sent, failed = (sent, failed + 1) if error else (sent + 1, failed)
    db.session.commit()
    return {"sent": sent, "failed": failed, "due": notifications.count_due()}


# -- installing them ---------------------------------------------------------


def install(app: Flask, names: Iterable[str]) -> Flask:
    """Switch the named seed bugs on in ``app``, a finished ``create_app()``."""
    wanted = parse_regressions(names)
    if wanted:
        logger.warning("seed regressions switched ON: %s", ", ".join(sorted(wanted)))
    if "no_request_cleanup" in wanted:
        defeat_request_cleanup(app)
    jobs = get_jobs(app)
    if "job_without_app_context" in wanted:
        jobs.runner = run_job_without_cleanup
    if "job_create_app_per_run" in wanted:
        jobs.runner = run_job_in_new_app
    if "long_running_job_session" in wanted:
        jobs.bodies["retry_failed_notifications"] = retry_notifications_in_one_session
    if "disconnect_thread_without_cleanup" in wanted:
        get_tasks(app).runner = run_in_context_never_popped
    return app
