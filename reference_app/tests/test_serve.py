"""``python -m reference_app``: HTTP and Socket.IO in one process, stopped
cleanly; and two processes sharing events through Redis."""

from __future__ import annotations

import signal
import socket
import uuid

import pytest
import socketio
from flask import Flask

from reference_app.extensions import db
from reference_app.models import Buggy
from reference_app.tests.config import TestingConfig

from .processes import ServerProcess, command_env
from .support import Recorder, World, http, wait_until

REDIS = ("127.0.0.1", 6379)


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1):
            return True
    except OSError:
        return False


def env_for(url: str, **extra: str) -> dict[str, str]:
    return command_env(url, SECRET_KEY=TestingConfig.SECRET_KEY, **extra)


def connect(url: str, token: str) -> tuple[socketio.Client, Recorder]:
    client = socketio.Client(reconnection=False)
    recorder = Recorder()
    client.on("*", recorder.add)
    client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return client, recorder


def test_serve_answers_http_and_socketio_and_stops_cleanly(
    app: Flask, world: World, dbleak_mysql_url: str
) -> None:
    with ServerProcess(env_for(dbleak_mysql_url)) as server:
        assert server.url, server.output
        assert http("GET", f"{server.url}/health")[0] == 200
        status, report = http("GET", f"{server.url}/db-pool-status")
        assert status == 200
        assert report["details"]["engine"]["driver"] == "pymysql"

        client, _ = connect(server.url, world.driver.token)
        buggy_id = world.buggies[world.driver.id]
        with app.app_context():
            assert db.session.get(Buggy, buggy_id).status == "available"  # type: ignore[union-attr]
        assert server.stop(signal.SIGTERM) == 0
        # The server closed the socket and ran the driver's disconnect before exiting.
        wait_until(
            lambda: client.eio.state == "disconnected", message="the client to see the close"
        )
    assert "server stopped; connections released" in server.output
    assert "Traceback" not in server.output
    with app.app_context():
        assert db.session.get(Buggy, buggy_id).status == "offline"  # type: ignore[union-attr]


def test_ctrl_c_with_the_scheduler(world: World, dbleak_mysql_url: str) -> None:
    with ServerProcess(env_for(dbleak_mysql_url, SCHEDULER_ENABLED="1")) as server:
        assert server.wait_for_line("scheduler started")
        assert server.stop(signal.SIGINT) == 0
    assert "scheduler stopped" in server.output
    assert "server stopped; connections released" in server.output


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("not a url", 2, "error: DATABASE_URL is not a valid SQLAlchemy URL"),
        ("mysql+pymysql://nobody@127.0.0.1:1/nothing", 1, "error: database unavailable: (2003"),
    ],
)
def test_serve_refuses_a_bad_database_in_one_line(url: str, code: int, message: str) -> None:
    server = ServerProcess(env_for(url)).start()
    assert server.stop() == code
    errors = [line for line in server.lines if line.startswith("error:")]
    assert len(errors) == 1, server.output
    assert errors[0].startswith(message)
    assert "Traceback" not in server.output


@pytest.mark.skipif(not redis_reachable(), reason="no Redis server at 127.0.0.1:6379")
def test_two_processes_share_events_through_redis(world: World, dbleak_mysql_url: str) -> None:
    env = env_for(
        dbleak_mysql_url,
        SOCKETIO_MESSAGE_QUEUE="redis://127.0.0.1:6379/0",
        SOCKETIO_CHANNEL=f"reference-app-test-{uuid.uuid4().hex}",  # no cross-talk with other runs
    )
    with ServerProcess(env) as first, ServerProcess(env) as second:
        assert first.url
        assert second.url
        admin, events = connect(second.url, world.admin.token)
        try:
            status, created = http(
                "POST",
                f"{first.url}/api/requests",
                {"location_id": world.locations[0]},
                world.guest.token,
            )
            assert status == 201
            assert events.wait_for("request_created", timeout=10)["id"] == created["id"]
        finally:
            admin.disconnect()
        assert first.stop() == 0
        assert second.stop() == 0
