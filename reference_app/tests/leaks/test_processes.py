"""The seed's job bugs on a multi-process run: three real server processes, each
with its scheduler, run ``cleanup_old_logs`` every 0.1 s (one process per slot).

The plugin's window (``dbleak.assert_no_leaks``) is open while ten slots run: every
server connection the processes open in it and keep is a leak. As the app is, the
processes reuse the pooled connection each has had since start-up and the window
is clean; with a job bug installed in the processes (``python -m
reference_app.tests.serve``), every run leaves a connection behind in whichever
process ran it, and the window fails naming them (``test_regressions_caught.py``).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import func, select

from reference_app.extensions import db
from reference_app.models import JobClaim
from reference_app.tests.config import TestingConfig

from ..processes import ServerProcess, command_env
from ..support import wait_until
from .conftest import app_session

PROCESSES, SLOTS = 3, 10
JOB = "cleanup_old_logs"
# The job every 0.1 s; the others out of the way (once an hour).
INTERVALS = "retry_failed_notifications=3600,mark_permanently_failed=3600,"
INTERVALS += f"check_request_timeouts=3600,{JOB}=0.1"


def slots(app: Flask) -> int:
    with app_session(app):
        query = select(func.count()).select_from(JobClaim).where(JobClaim.job == JOB)
        return int(db.session.scalar(query) or 0)


def test_a_job_run_on_three_processes_keeps_no_connection(
    app: Flask, dbleak: Any, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    env = command_env(
        dbleak_mysql_url,
        SECRET_KEY=TestingConfig.SECRET_KEY,
        SCHEDULER_ENABLED="1",
        JOB_INTERVALS=INTERVALS,
    )
    with ExitStack() as stack:
        running = [
            stack.enter_context(ServerProcess(env, module="reference_app.tests.serve"))
            for _ in range(PROCESSES)
        ]
        for server in running:
            assert server.url, server.output
        # Warm: every process has its pooled connection (opened at start-up).
        start = slots(app)
        wait_until(lambda: slots(app) >= start + 2, timeout=30, message="the job to run")
        with dbleak.assert_no_leaks(settle=0.5):
            begin = slots(app)
            wait_until(
                lambda: slots(app) >= begin + SLOTS, timeout=60, message=f"{SLOTS} more runs"
            )
    for server in running:
        assert "Traceback" not in server.output, server.output
