"""The four jobs: what they do, and that each cleans up after itself."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from reference_app.extensions import db
from reference_app.jobs import JOBS, UnknownJob, run_job
from reference_app.models import (
    GuestRequest,
    Notification,
    RequestStatus,
    SystemLog,
    utcnow,
)
from reference_app.services.notifications import notify

from .senders import BrokenSender, FlakySender, GatedSender
from .support import AppFactory, World, queue_pool

CLEANED = "Session cleaned up successfully"


def cleaned_up(caplog: pytest.LogCaptureFixture, name: str) -> bool:
    return any(
        r.name == "reference_app.jobs"
        and r.levelno == logging.INFO
        and r.getMessage() == f"{name}: {CLEANED}"
        for r in caplog.records
    )


def checked_out(app: Flask) -> int:
    with app.app_context():
        return queue_pool().checkedout()


def add_notifications(app: Flask, user_id: int, count: int = 1, **values: Any) -> list[int]:
    with app.app_context():
        rows = [notify(user_id, "hello", {"n": n}) for n in range(count)]
        db.session.flush()
        ids = [row.id for row in rows]
        if values:
            db.session.execute(
                update(Notification).where(Notification.id.in_(ids)).values(**values)
            )
        db.session.commit()
    return ids


def notification(app: Flask, notification_id: int) -> Notification:
    with app.app_context():
        row = db.session.get(Notification, notification_id)
        assert row is not None
        db.session.expunge(row)
    return row


@pytest.mark.parametrize("name", list(JOBS))
def test_each_job_runs_in_the_app_and_cleans_up(
    app: Flask, world: World, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    result = run_job(app, name)
    assert isinstance(result, dict)
    assert cleaned_up(caplog, name)
    assert checked_out(app) == 0


def test_the_jobs_are_the_seeds_four() -> None:
    assert list(JOBS) == [
        "retry_failed_notifications",
        "mark_permanently_failed",
        "cleanup_old_logs",
        "check_request_timeouts",
    ]


def test_an_unknown_job(app: Flask) -> None:
    with pytest.raises(UnknownJob):
        run_job(app, "nope")


def test_jobs_reuse_the_apps_engine(
    app: Flask, world: World, server_connections: Callable[[], int]
) -> None:
    """Runs of a job open no new server connections: no engine per run."""
    for name in JOBS:
        run_job(app, name)
    before = server_connections()
    for _ in range(3):
        for name in JOBS:
            run_job(app, name)
    assert server_connections() == before


def test_a_failed_send_is_recorded_and_retried(make_app: AppFactory, world: World) -> None:
    app = make_app(NOTIFICATION_SENDER=FlakySender(failures=1))
    [nid] = add_notifications(app, world.guest.id)
    assert run_job(app, "retry_failed_notifications") == {"sent": 0, "failed": 1, "due": 0}
    failed = notification(app, nid)
    assert (failed.status, failed.attempts, failed.last_error) == (
        "failed",
        1,
        "push service unavailable",
    )
    assert failed.next_attempt_at > utcnow()  # backed off: not due yet
    assert run_job(app, "retry_failed_notifications")["sent"] == 0

    with app.app_context():  # time passes
        db.session.execute(
            update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    assert run_job(app, "retry_failed_notifications") == {"sent": 1, "failed": 0, "due": 0}
    sent = notification(app, nid)
    assert (sent.status, sent.attempts, sent.last_error) == ("sent", 2, None)
    assert sent.sent_at is not None


def test_a_crashing_sender_does_not_stop_the_job(make_app: AppFactory, world: World) -> None:
    app = make_app(NOTIFICATION_SENDER=BrokenSender())
    ids = add_notifications(app, world.guest.id, count=2)
    assert run_job(app, "retry_failed_notifications")["failed"] == 2
    assert {notification(app, i).last_error for i in ids} == {
        "ZeroDivisionError: bug in the sender"
    }


def test_exhausted_notifications_are_marked_permanently_failed(app: Flask, world: World) -> None:
    past = utcnow() - timedelta(minutes=1)
    [spent] = add_notifications(
        app, world.guest.id, status="failed", attempts=5, next_attempt_at=past
    )
    [retry] = add_notifications(
        app, world.guest.id, status="failed", attempts=2, next_attempt_at=past
    )
    assert run_job(app, "mark_permanently_failed") == {"marked": 1}
    assert notification(app, spent).status == "permanently_failed"
    assert notification(app, retry).status == "failed"
    with app.app_context():
        messages = db.session.scalars(select(SystemLog.message)).all()
    assert messages == ["1 notification(s) gave up"]
    assert run_job(app, "retry_failed_notifications")["sent"] == 1  # only the one with tries left


def test_old_logs_are_removed_after_the_retention_period(app: Flask) -> None:
    now = utcnow()
    with app.app_context():
        for days, message in ((31, "old"), (29, "recent"), (0, "today")):
            db.session.add(
                SystemLog(
                    level="info",
                    source="test",
                    message=message,
                    created_at=now - timedelta(days=days),
                )
            )
        db.session.commit()
    assert run_job(app, "cleanup_old_logs") == {"deleted": 1, "remaining": 2}
    with app.app_context():
        assert sorted(db.session.scalars(select(SystemLog.message))) == ["recent", "today"]


def test_stale_pending_requests_time_out(app: Flask, world: World) -> None:
    with app.app_context():
        stale = GuestRequest(
            guest_id=world.guests[0].id,
            location_id=world.locations[0],
            created_at=utcnow() - timedelta(hours=1),
        )
        fresh = GuestRequest(guest_id=world.guests[1].id, location_id=world.locations[0])
        db.session.add_all([stale, fresh])
        db.session.commit()
        stale_id, fresh_id = stale.id, fresh.id
    assert run_job(app, "check_request_timeouts") == {"timed_out": 1, "pending": 1}
    with app.app_context():
        statuses = {r.id: r.status for r in db.session.scalars(select(GuestRequest))}
        notices = [(n.user_id, n.kind, n.status) for n in db.session.scalars(select(Notification))]
    assert statuses == {stale_id: RequestStatus.TIMED_OUT.value, fresh_id: "pending"}
    assert notices == [
        (world.guests[0].id, "request_timed_out", "sent"),
    ]


def test_a_failing_job_still_cleans_up(
    make_app,
    world: World,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(REQUEST_TIMEOUT_SECONDS="not a number")
    with pytest.raises(TypeError):
        run_job(app, "check_request_timeouts")
    assert cleaned_up(caplog, "check_request_timeouts")
    assert checked_out(app) == 0


def test_no_connection_is_held_while_the_sender_works(
    make_app,
    world: World,
    dbleak: Any,
) -> None:
    """A long-running job must not keep its session (transaction, connection,
    snapshot) while it waits on slow I/O: the window below closes while the
    sender is blocked, and nothing may be checked out at that moment."""
    sender = GatedSender()
    app = make_app(NOTIFICATION_SENDER=sender)
    ids = add_notifications(app, world.guest.id, count=2)
    job = threading.Thread(target=run_job, args=(app, "retry_failed_notifications"))
    held = -1
    try:
        with dbleak.assert_no_leaks():
            job.start()
            assert sender.sending.wait(timeout=10)
            held = checked_out(app)
    finally:
        sender.release.set()
        job.join(timeout=30)
    assert held == 0, f"the job held {held} connection(s) while the sender worked"
    assert sender.delivered == ids
