"""Three real ``python -m reference_app`` processes on one database, each with
its scheduler on: every job runs once per schedule slot across them, and no
notification is sent twice -- also when a process dies in the middle of sending.
With Redis as Socket.IO's message queue, clients on different processes see
each other's events.
"""

from __future__ import annotations

import re
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import socketio
from flask import Flask
from sqlalchemy import func, select

from reference_app.extensions import db
from reference_app.jobs import JOBS
from reference_app.models import JobClaim, Notification
from reference_app.services.notifications import notify
from reference_app.tests.config import TestingConfig

from .processes import ServerProcess, command_env
from .senders import read_sent
from .support import World, http, wait_until
from .test_serve import connect, redis_reachable

PROCESSES = 3
SENDER = "reference_app.tests.senders:FileRecordingSender"
_CLAIMED = re.compile(r"reference_app\.scheduler: (\w+): slot (\d+) claimed by (\S+)")
_SKIPPED = re.compile(r"reference_app\.scheduler: (\w+): this slot runs in another process")
_CLEANED = re.compile(r"reference_app\.jobs: (\w+): Session cleaned up successfully")


def server_env(url: str, sent_log: Path, **extra: str) -> dict[str, str]:
    settings = {
        "SECRET_KEY": TestingConfig.SECRET_KEY,
        "SCHEDULER_ENABLED": "1",
        "NOTIFICATION_SENDER": SENDER,
        "REFERENCE_APP_SENT_LOG": str(sent_log),
    }
    return command_env(url, **{**settings, **extra})


@contextmanager
def servers(*envs: dict[str, str]) -> Iterator[list[ServerProcess]]:
    """Start every process (all are stopped, SIGTERM, on the way out)."""
    with ExitStack() as stack:
        started = [stack.enter_context(ServerProcess(env)) for env in envs]
        for server in started:
            assert server.url, server.output
        yield started


def add_due(app: Flask, user_id: int, count: int) -> list[int]:
    with app.app_context():
        rows = [notify(user_id, "hello", {"n": n}) for n in range(count)]
        db.session.commit()
        return [row.id for row in rows]


def notification_states(app: Flask) -> Counter[str]:
    with app.app_context():
        states = Counter(db.session.scalars(select(Notification.status)))
        db.session.remove()
        return states


def claimed_rows(app: Flask) -> list[Notification]:
    with app.app_context():
        rows = list(
            db.session.scalars(select(Notification).where(Notification.claimed_by.is_not(None)))
        )
        db.session.remove()
        return rows


def slots_per_job(app: Flask) -> dict[str, int]:
    with app.app_context():
        counts = dict(
            db.session.execute(select(JobClaim.job, func.count()).group_by(JobClaim.job)).all()
        )
        db.session.remove()
        return {name: int(counts.get(name, 0)) for name in JOBS}


def test_three_processes_run_each_job_once_per_schedule_slot(
    app: Flask, world: World, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    fast = ",".join(f"{name}=0.2" for name in JOBS)
    env = server_env(dbleak_mysql_url, tmp_path / "sent", JOB_INTERVALS=fast, LOG_LEVEL="DEBUG")
    with servers(*[env] * PROCESSES) as running:
        # Counted from the moment all three are up: the first started earlier.
        base = slots_per_job(app)
        wait_until(
            lambda: min(n - base[name] for name, n in slots_per_job(app).items()) >= 10,
            timeout=60,
            message="ten more slots of every job with all processes up",
        )
    # SIGTERM: each process finished the run it had started before exiting.
    claims: Counter[tuple[str, int]] = Counter()
    for server in running:
        assert "Traceback" not in server.output, server.output
        mine = [m.groups() for m in _CLAIMED.finditer(server.output)]
        claims.update((name, int(slot)) for name, slot, _ in mine)
        runs = Counter(m.group(1) for m in _CLEANED.finditer(server.output))
        assert runs == Counter(name for name, _, _ in mine), "a claimed slot did not run"
        # Every process tried every job: the slots were contended, not left to one.
        tried = {name for name, _, _ in mine} | set(_SKIPPED.findall(server.output))
        assert tried == set(JOBS), server.output[-2000:]
    assert claims, "no slot was claimed"
    assert max(claims.values()) == 1, [slot for slot, n in claims.items() if n > 1]
    with app.app_context():
        rows = db.session.execute(select(JobClaim.job, JobClaim.slot)).all()
        recorded = {(job, slot) for job, slot in rows}
        db.session.remove()
    assert set(claims) == recorded
    skipped = sum(len(_SKIPPED.findall(server.output)) for server in running)
    assert skipped > 0, "no process ever found its slot taken: nothing was contended"


def test_three_processes_send_each_notification_once(
    app: Flask, world: World, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    sent_log = tmp_path / "sent.jsonl"
    due = add_due(app, world.guest.id, 150)
    env = server_env(
        dbleak_mysql_url,
        sent_log,
        JOB_INTERVALS="retry_failed_notifications=0.05",
        NOTIFICATION_BATCH_SIZE="10",
        REFERENCE_APP_SENDER_DELAY="0.005",
        SERVER_PROCESSES=str(PROCESSES),
    )
    with servers(*[env] * PROCESSES) as running:
        # Three of the seed's pools (60 each) exceed the server's default 151.
        exceeded = "3 processes x 60 connections = 180 exceed the server's max_connections=151"
        for server in running:
            assert "db pool warning: size=20" in server.output
            assert exceeded in server.output
        status, report = http("GET", f"{running[0].url}/db-pool-status")
        assert status == 200
        assert report["status"] == "warning"
        assert exceeded in report["warnings"]
        assert report["details"]["capacity"]["deployment_ceiling"] == 180
        # Meanwhile requests made and cancelled on every process: each cancel
        # delivers its notification at once, racing the other processes' jobs.
        for round_ in range(10):
            for i, guest in enumerate(world.guests):
                maker = running[(round_ + i) % PROCESSES].url
                canceller = running[(round_ + i + 1) % PROCESSES].url
                status, made = http(
                    "POST",
                    f"{maker}/api/requests",
                    {"location_id": world.locations[0]},
                    guest.token,
                )
                assert status == 201, made
                status, body = http(
                    "POST", f"{canceller}/api/requests/{made['id']}/cancel", None, world.admin.token
                )
                assert status == 200, body
        total = len(due) + 10 * len(world.guests)
        wait_until(
            lambda: notification_states(app) == {"sent": total},
            timeout=60,
            message=f"all {total} notifications sent",
        )
    sent = read_sent(sent_log)
    counts = Counter(entry["id"] for entry in sent)
    assert [nid for nid, n in counts.items() if n > 1] == [], "sent twice"
    assert len(counts) == total
    assert set(due) <= set(counts)
    assert len({entry["pid"] for entry in sent}) >= 2, "one process sent everything"
    assert claimed_rows(app) == []
    for server in running:
        assert "Traceback" not in server.output, server.output


def test_a_process_killed_while_sending_leaves_its_notifications_to_the_others(
    app: Flask, world: World, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    sent_log = tmp_path / "sent.jsonl"
    due = add_due(app, world.guest.id, 20)
    common: dict[str, Any] = {
        "JOB_INTERVALS": "retry_failed_notifications=0.1",
        "NOTIFICATION_BATCH_SIZE": "50",
        "NOTIFICATION_CLAIM_SECONDS": "1",
    }
    doomed = ServerProcess(
        server_env(dbleak_mysql_url, sent_log, REFERENCE_APP_SENDER_HANG="1", **common)
    ).start()
    try:
        started = Path(f"{sent_log}.started")
        wait_until(started.exists, timeout=30, message="the doomed process to start sending")
        held = claimed_rows(app)
        assert {row.id for row in held} == set(due)  # it claimed the whole batch
    finally:
        doomed.stop(signal.SIGKILL)
    env = server_env(dbleak_mysql_url, sent_log, **common)
    with servers(*[env] * (PROCESSES - 1)):
        wait_until(
            lambda: notification_states(app) == {"sent": len(due)},
            timeout=60,
            message="the survivors to send what the killed process had claimed",
        )
    sent = read_sent(sent_log)
    assert sorted(entry["id"] for entry in sent) == sorted(due)  # each once
    assert doomed.pid not in {entry["pid"] for entry in sent}
    assert claimed_rows(app) == []
    with app.app_context():
        attempts = set(db.session.scalars(select(Notification.attempts)))
        db.session.remove()
    assert attempts == {1}  # the killed process recorded nothing


@pytest.mark.skipif(not redis_reachable(), reason="no Redis server at 127.0.0.1:6379")
def test_a_driver_a_guest_and_an_admin_on_three_processes_see_each_others_events(
    world: World, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    env = server_env(
        dbleak_mysql_url,
        tmp_path / "sent",
        SCHEDULER_ENABLED="0",
        SOCKETIO_MESSAGE_QUEUE="redis://127.0.0.1:6379/0",
        SOCKETIO_CHANNEL=f"reference-app-test-{uuid.uuid4().hex}",  # no cross-talk
    )
    with servers(*[env] * PROCESSES) as (on_a, on_b, on_c):
        clients: list[socketio.Client] = []
        try:
            driver, driver_events = connect(on_a.address, world.driver.token)
            guest, guest_events = connect(on_b.address, world.guest.token)
            admin, admin_events = connect(on_c.address, world.admin.token)
            clients += [driver, guest, admin]
            # The guest calls a buggy on B: the driver on A hears of it.
            status, made = http(
                "POST",
                f"{on_b.url}/api/requests",
                {"location_id": world.locations[0]},
                world.guest.token,
            )
            assert status == 201, made
            assert driver_events.wait_for("request_created", timeout=10)["id"] == made["id"]
            # The driver takes it on A: the guest on B and the admin on C hear of it.
            status, taken = http(
                "POST", f"{on_a.url}/api/requests/{made['id']}/accept", None, world.driver.token
            )
            assert status == 200, taken
            accepted = guest_events.wait_for(
                "request_updated", lambda data: data["status"] == "accepted", timeout=10
            )
            assert accepted["driver_id"] == world.driver.id
            admin_events.wait_for(
                "request_updated", lambda data: data["status"] == "accepted", timeout=10
            )
            # The driver moves (a socket event on A): the guest on B sees the buggy.
            where = world.locations[1]
            ack = driver.call("location_update", {"location_id": where}, timeout=10)
            assert ack["ok"] is True, ack
            moved = guest_events.wait_for(
                "buggy_status", lambda data: data["location_id"] == where, timeout=10
            )
            assert moved["id"] == world.buggies[world.driver.id]
            # The driver's socket on A closes: the admin on C is told it went offline.
            driver.disconnect()
            offline = admin_events.wait_for("driver_offline", timeout=10)
            assert offline["driver_id"] == world.driver.id
            # ...and the guest on B sees the request back to pending.
            guest_events.wait_for(
                "request_updated", lambda data: data["status"] == "pending", timeout=10
            )
        finally:
            for client in clients:
                if client.connected:
                    client.disconnect()
    for server in (on_a, on_b, on_c):
        assert "Traceback" not in server.output, server.output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_processes_started_with_reuse_port_share_one_port(
    world: World, dbleak_mysql_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = server_env(dbleak_mysql_url, tmp_path / "sent", SCHEDULER_ENABLED="0")
    shared = [ServerProcess(env, "--reuse-port", port=port) for _ in range(PROCESSES)]
    with ExitStack() as stack:
        for server in shared:
            stack.enter_context(server)
            assert server.url == f"http://127.0.0.1:{port}", server.output
        for _ in range(60):  # a new connection each: the kernel spreads them
            status, body = http("GET", f"http://127.0.0.1:{port}/api/locations")
            assert status == 200, body
    # Counted once the processes have stopped: their output has been read to the end.
    served = [server.output.count('"GET /api/locations HTTP/1.1" 200') for server in shared]
    assert sum(served) == 60
    assert all(count > 0 for count in served), served
