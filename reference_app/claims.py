"""Claims that hold across server processes: which process runs a scheduled
job in a given schedule slot.

Every process runs the scheduler (under gunicorn with N workers, or on N
hosts, each job fires N times per interval). Before a run, a process inserts
(job, slot) into ``job_claims``, where slot = the server's clock divided by
the job's interval: the insert succeeds for one process per slot and the
others skip the run. Nothing is held while the job runs, so a process that
crashes mid-run blocks nothing: the next slot runs elsewhere (and the rows it
had claimed, e.g. notifications, carry their own expiring claims).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from typing import Any, cast

from flask import Flask, current_app
from sqlalchemy import CursorResult, delete, func, insert, select

from .extensions import db
from .models import JobClaim

_KEY = "reference_app.instance_id"
# Slots of a job kept in job_claims (older ones are deleted by the claimer).
KEEP_SLOTS = 1000


def init_app(app: Flask) -> None:
    # Host, process and app: unique across hosts, and across apps of one process.
    app.extensions[_KEY] = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def instance_id(app: Flask | None = None) -> str:
    target = app if app is not None else current_app
    value: str = target.extensions[_KEY]
    return value


def claim_slot(app: Flask, job: str, interval: float) -> int | None:
    """Claim this schedule slot of ``job`` for this process: the slot, or None
    when another process has it."""
    with app.app_context():
        # The server's clock: every process and host agrees on the slot.
        now = db.session.execute(select(func.unix_timestamp(func.now(6)))).scalar_one()
        slot = math.floor(float(now) / interval)
        result = cast(
            CursorResult[Any],
            db.session.execute(
                insert(JobClaim)
                .prefix_with("IGNORE")  # a duplicate (job, slot): someone else's
                .values(job=job, slot=slot, claimed_by=instance_id(app), claimed_at=func.now(6))
            ),
        )
        claimed = result.rowcount == 1
        if claimed and slot % 100 == 0:
            db.session.execute(
                delete(JobClaim).where(JobClaim.job == job, JobClaim.slot < slot - KEEP_SLOTS)
            )
        db.session.commit()
    return slot if claimed else None
