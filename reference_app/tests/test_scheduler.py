"""APScheduler in the process: every job runs with the one app, and stops with it."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from reference_app import shutdown_app
from reference_app.jobs import JOBS
from reference_app.scheduler import start_scheduler

from .support import AppFactory, wait_until

FAST = {name: 0.05 for name in JOBS}


def cleanups(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    counts = dict.fromkeys(JOBS, 0)
    for record in list(caplog.records):
        message = record.getMessage()
        if record.name == "reference_app.jobs" and message.endswith(
            "Session cleaned up successfully"
        ):
            counts[message.split(":")[0]] += 1
    return counts


def test_the_scheduler_is_off_unless_enabled(app: Flask) -> None:
    assert app.config["SCHEDULER_ENABLED"] is False
    assert start_scheduler(app) is None


def test_scheduled_jobs_run_clean_and_stop_with_the_app(
    make_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app: Flask = make_app(SCHEDULER_ENABLED=True, JOB_INTERVALS_SECONDS=FAST)
    caplog.set_level(logging.INFO)
    scheduler = start_scheduler(app)
    assert scheduler is not None
    assert scheduler.running
    with pytest.raises(RuntimeError, match="already running"):
        start_scheduler(app)

    wait_until(
        lambda: min(cleanups(caplog).values()) >= 2, timeout=10, message="every job to run twice"
    )
    shutdown_app(app)  # waits for a job that is running right now
    assert not scheduler.running
    assert "reference_app.scheduler" not in app.extensions
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    shutdown_app(app)  # a second call is harmless
