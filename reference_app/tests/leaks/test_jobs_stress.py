"""The four background jobs, each run 50 times on 4 threads (as APScheduler's
thread pool would run them, only more often and overlapping), on data that
gives them real work: due and exhausted notifications, old log rows, stale
requests.

The retry job also gets a slow sender that checks, with the plugin's own
detector, that no connection is held while the job threads are sending: the
seed's long-running session returns its connection when the job ends, so the
check after the test cannot see it; only a look taken *during* the sends can.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, insert, select

from reference_app.config import SEED_ENGINE_OPTIONS
from reference_app.extensions import db
from reference_app.jobs import JOBS, run_job
from reference_app.models import (
    GuestRequest,
    Location,
    Notification,
    Role,
    SystemLog,
    User,
    utcnow,
)
from reference_app.services.notifications import OutgoingNotification
from reference_app.tasks import get_tasks

from ..conftest import AppFactory, _empty_tables
from .conftest import POOL_TIMEOUT_SECONDS, app_session, checked_out_now

RUNS, THREADS = 50, 4
BATCH = 5  # notifications per retry run: 50 runs always find work
DUE, EXHAUSTED, OLD_LOGS, RECENT_LOGS, STALE = 250, 100, 300, 10, 40


class ProbeSender:
    """A slow push service (``delay`` s per send) that looks for leaks while it works.

    A *quiet moment* is one at which every thread inside a job run is inside
    ``send()``: then no job thread may hold a connection (the job ends its
    read transaction before sending, and records each result in a short
    transaction of its own). At quiet moments the sender closes a leak-check
    window of the plugin's detector -- the first one opened before the stress
    -- and opens the next one. A connection checked out in the window and
    still held is reported by the detector (kind, stack, thread) and fails
    the run. ``wrap`` marks a callable's calls as job runs.
    """

    MAX_LOOKS = 20  # each look queries the server's processlist

    def __init__(self, dbleak: Any, delay: float = 0.01) -> None:
        self.delay = delay
        self.delivered: set[int] = set()
        self.looks = 0
        self._dbleak = dbleak
        self._window: Any = None
        self._running = 0  # threads inside a job run
        self._sending = 0  # of those, threads inside send()
        self._lock = threading.Lock()

    def open_window(self) -> None:
        self._window = self._dbleak.assert_no_leaks(settle=0)
        self._window.__enter__()

    def close_window(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            window.__exit__(None, None, None)

    def wrap(self, job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                self._running += 1
            try:
                job()
            finally:
                with self._lock:
                    self._running -= 1

        return run

    def send(self, message: OutgoingNotification) -> None:
        with self._lock:
            self._sending += 1
            try:
                if self._sending == self._running and self.looks < self.MAX_LOOKS:
                    # Quiet: no job thread can leave send() or start a run
                    # while the lock is held.
                    self.looks += 1
                    self.close_window()  # raises pytest's Failed on a leak
                    self.open_window()
            except BaseException:
                self._sending -= 1
                raise
        try:
            time.sleep(self.delay)
            with self._lock:
                self.delivered.add(message.id)
        finally:
            with self._lock:
                self._sending -= 1


def seed_work(app: Flask) -> None:
    """Users, notifications (due and exhausted), log rows old and recent, stale requests."""
    now = utcnow()
    past = now - timedelta(minutes=1)
    with app_session(app):
        db.session.execute(
            insert(User),
            [{"username": "admin", "password_hash": "x", "role": Role.ADMIN.value}]
            + [
                {"username": f"guest{i}", "password_hash": "x", "role": Role.GUEST.value}
                for i in range(STALE)
            ],
        )
        guests = db.session.scalars(select(User.id).where(User.role == Role.GUEST.value)).all()
        location = _a_location()
        db.session.execute(
            insert(Notification),
            [
                {
                    "user_id": guests[i % len(guests)],
                    "kind": "hello",
                    "payload": {"n": i},
                    "next_attempt_at": past - timedelta(seconds=i),
                }
                for i in range(DUE)
            ]
            + [
                {
                    "user_id": guests[i % len(guests)],
                    "kind": "given_up",
                    "payload": {"n": i},
                    "status": "failed",
                    "attempts": 5,
                    "next_attempt_at": past,
                }
                for i in range(EXHAUSTED)
            ],
        )
        db.session.execute(
            insert(SystemLog),
            [
                {
                    "level": "info",
                    "source": "seed",
                    "message": f"old {i}",
                    "created_at": now - timedelta(days=31),
                }
                for i in range(OLD_LOGS)
            ]
            + [
                {"level": "info", "source": "seed", "message": f"recent {i}", "created_at": now}
                for i in range(RECENT_LOGS)
            ],
        )
        db.session.execute(
            insert(GuestRequest),
            [
                {
                    "guest_id": guest,
                    "location_id": location,
                    "created_at": now - timedelta(hours=1),
                }
                for guest in guests
            ],
        )
        db.session.commit()


def _a_location() -> int:
    location = Location(name="Main Lobby")
    db.session.add(location)
    db.session.flush()
    return location.id


def count(app: Flask, model: Any, *where: Any) -> int:
    with app_session(app):
        query = select(func.count()).select_from(model)
        return int(db.session.scalar(query.where(*where) if where else query) or 0)


def statuses(app: Flask) -> Counter[str]:
    with app_session(app):
        return Counter(db.session.scalars(select(Notification.status)))


@pytest.fixture
def job_app(make_app: AppFactory) -> Callable[..., Flask]:
    """The app with the seed's pool (short pool_timeout, see conftest) and data to work on."""

    def build(**overrides: Any) -> Flask:
        app = make_app(
            SQLALCHEMY_ENGINE_OPTIONS={
                **SEED_ENGINE_OPTIONS,
                "pool_timeout": POOL_TIMEOUT_SECONDS,
            },
            NOTIFICATION_BATCH_SIZE=BATCH,
            **overrides,
        )
        _empty_tables(app)
        seed_work(app)
        return app

    return build


class Results:
    """Collects what each run of a job returned."""

    def __init__(self, app: Flask, name: str) -> None:
        self.app, self.name = app, name
        self.values: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self) -> None:
        result = run_job(self.app, self.name)
        with self._lock:
            self.values.append(result)

    def total(self, key: str) -> int:
        return sum(value[key] for value in self.values)


def finished_cleanly(app: Flask, results: Results) -> None:
    assert len(results.values) == RUNS
    assert get_tasks(app).running == 0
    assert checked_out_now(app) == 0


@pytest.mark.dbleak_jobs(runs=RUNS, threads=THREADS)
def test_retry_failed_notifications_under_stress(
    job_app: Callable[..., Flask], dbleak_jobs: Any, dbleak: Any
) -> None:
    sender = ProbeSender(dbleak)
    app = job_app(NOTIFICATION_SENDER=sender)
    results = Results(app, "retry_failed_notifications")
    sender.open_window()
    try:
        dbleak_jobs.run(sender.wrap(results))
    finally:
        sender.close_window()
    assert sender.looks > 0, "no quiet moment while sending: the sends were never checked"
    finished_cleanly(app, results)
    assert results.total("failed") == 0
    # Every delivered notification is recorded as sent, and only those.
    with app_session(app):
        sent = set(db.session.scalars(select(Notification.id).where(Notification.status == "sent")))
    assert sent == sender.delivered
    assert len(sent) >= BATCH * RUNS // THREADS // 2  # real work, not empty runs
    assert statuses(app) == {"sent": len(sent), "pending": DUE - len(sent), "failed": EXHAUSTED}


@pytest.mark.dbleak_jobs(runs=RUNS, threads=THREADS)
def test_mark_permanently_failed_under_stress(
    job_app: Callable[..., Flask], dbleak_jobs: Any
) -> None:
    app = job_app()
    results = Results(app, "mark_permanently_failed")
    dbleak_jobs.run(results)
    finished_cleanly(app, results)
    assert results.total("marked") == EXHAUSTED
    assert statuses(app)["permanently_failed"] == EXHAUSTED


@pytest.mark.dbleak_jobs(runs=RUNS, threads=THREADS)
def test_cleanup_old_logs_under_stress(job_app: Callable[..., Flask], dbleak_jobs: Any) -> None:
    app = job_app()
    results = Results(app, "cleanup_old_logs")
    dbleak_jobs.run(results)
    finished_cleanly(app, results)
    assert results.total("deleted") == OLD_LOGS
    assert count(app, SystemLog) == RECENT_LOGS


@pytest.mark.dbleak_jobs(runs=RUNS, threads=THREADS)
def test_check_request_timeouts_under_stress(
    job_app: Callable[..., Flask], dbleak_jobs: Any
) -> None:
    app = job_app()
    results = Results(app, "check_request_timeouts")
    dbleak_jobs.run(results)
    finished_cleanly(app, results)
    assert results.total("timed_out") == STALE  # SKIP LOCKED: each request once
    assert count(app, GuestRequest, GuestRequest.status == "timed_out") == STALE
    assert count(app, Notification, Notification.kind == "request_timed_out") == STALE


@pytest.mark.dbleak_jobs(runs=RUNS, threads=THREADS)
def test_all_four_jobs_interleaved(job_app: Callable[..., Flask], dbleak_jobs: Any) -> None:
    """The four jobs at once, round-robin on the same threads and the same data."""
    app = job_app()
    runs = {name: Results(app, name) for name in JOBS}
    result = dbleak_jobs.run(*runs.values())
    assert result.runs == RUNS * len(JOBS)
    for results in runs.values():
        finished_cleanly(app, results)
    assert runs["mark_permanently_failed"].total("marked") == EXHAUSTED
    assert runs["check_request_timeouts"].total("timed_out") == STALE
    assert runs["cleanup_old_logs"].total("deleted") == OLD_LOGS
    assert runs["retry_failed_notifications"].total("sent") > 0
