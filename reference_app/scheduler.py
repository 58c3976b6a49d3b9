"""APScheduler in the server process: each job runs through ``run_job`` with
the one application, and the scheduler is shut down with the app.

Every server process runs a scheduler; a run first claims its schedule slot
(``claims.claim_slot``), so each job runs once per interval across them all.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from .claims import claim_slot, instance_id
from .errors import one_line
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
            run_scheduled,
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


def run_scheduled(app: Flask, name: str) -> None:
    """One scheduled run: only in the process that claims this slot."""
    try:
        slot = claim_slot(app, name, float(app.config["JOB_INTERVALS_SECONDS"][name]))
    except SQLAlchemyError as error:
        logger.error("%s: could not claim its schedule slot: %s", name, one_line(error))
        return
    if slot is None:
        logger.debug("%s: this slot runs in another process", name)
        return
    logger.info("%s: slot %d claimed by %s", name, slot, instance_id(app))
    run_job(app, name)


def stop_scheduler(app: Flask, *, wait: bool = True) -> None:
    """Stop the scheduler; with ``wait`` running jobs finish first."""
    scheduler: BackgroundScheduler | None = app.extensions.pop(_KEY, None)
    if scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=wait)
        logger.info("scheduler stopped")
