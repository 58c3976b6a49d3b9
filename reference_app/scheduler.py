"""APScheduler in the server process: each job runs through ``run_job`` with
the one application, and the scheduler is shut down with the app."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from .jobs import JOBS, run_job

logger = logging.getLogger(__name__)

_KEY = "reference_app.scheduler"


def start_scheduler(app: Flask) -> BackgroundScheduler | None:
    """Start the jobs if ``SCHEDULER_ENABLED``; None when disabled."""
    if not app.config["SCHEDULER_ENABLED"]:
        return None
    if app.extensions.get(_KEY) is not None:
        raise RuntimeError("the scheduler of this app is already running")
    intervals = app.config["JOB_INTERVALS_SECONDS"]
    # One worker per job: a slow job never waits behind another, and
    # max_instances=1 keeps a job from overlapping itself.
    scheduler = BackgroundScheduler(
        executors={"default": {"type": "threadpool", "max_workers": len(JOBS)}},
        job_defaults={"max_instances": 1, "coalesce": True},
        timezone="UTC",
    )
    for name in JOBS:
        scheduler.add_job(
            run_job,
            "interval",
            args=(app, name),
            id=name,
            name=name,
            seconds=float(intervals[name]),
        )
    scheduler.start()
    app.extensions[_KEY] = scheduler
    logger.info("scheduler started: %s", ", ".join(f"{n} every {intervals[n]}s" for n in JOBS))
    return scheduler


def stop_scheduler(app: Flask, *, wait: bool = True) -> None:
    """Stop the scheduler; with ``wait`` running jobs finish first."""
    scheduler: BackgroundScheduler | None = app.extensions.pop(_KEY, None)
    if scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=wait)
        logger.info("scheduler stopped")
