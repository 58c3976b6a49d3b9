"""The pool monitor: the seed's JSON, its alarm criteria, and real pools under pressure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, event

from reference_app.db_monitor import (
    CRITICAL,
    HEALTHY,
    WARNING,
    DBConnectionMonitor,
    Judgement,
    PoolSnapshot,
    Thresholds,
    judge_health,
    judge_pool,
    processes_to_exceed,
)
from reference_app.extensions import db

from .support import AppFactory, wait_until

T = Thresholds()


def snap(out: int, *, size: int = 20, max_overflow: int = 40, overflow: int = 0) -> PoolSnapshot:
    return PoolSnapshot(size, max_overflow, out, max(size - out, 0), overflow)


# -- the judgement, with plain values ------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "overflow_seconds", "status", "needle"),
    [
        (snap(0), None, HEALTHY, None),
        (snap(48), None, HEALTHY, None),  # 80 % exactly is not above 80 %
        (snap(49, overflow=29), 1.0, WARNING, "above 80%"),
        (snap(57, overflow=37), 1.0, WARNING, "overflow in use"),
        (snap(58, overflow=38), 1.0, CRITICAL, "above 95%"),
        (snap(60, overflow=40), 1.0, CRITICAL, "no connection available"),
        (snap(21, overflow=1), 0.0, WARNING, "overflow in use: 1"),
        (snap(21, overflow=1), 299.0, WARNING, "overflow in use"),
        (snap(21, overflow=1), 300.0, CRITICAL, "continuously for 300s"),
        (snap(2, size=2, max_overflow=0), None, CRITICAL, "no connection available"),
    ],
)
def test_judge_pool(
    snapshot: PoolSnapshot, overflow_seconds: float | None, status: str, needle: str | None
) -> None:
    verdict = judge_pool(snapshot, T, overflow_seconds=overflow_seconds)
    assert verdict.status == status
    if needle is None:
        assert verdict.warnings == []
    else:
        assert any(needle in warning for warning in verdict.warnings), verdict.warnings


def test_available_and_usage_count_the_overflow() -> None:
    s = snap(5)
    assert (s.ceiling, s.available, s.usage) == (60, 55, 5 / 60)


@pytest.mark.parametrize(
    ("pool", "cleanup", "timeouts", "max_connections", "status"),
    [
        (HEALTHY, 0, 0, 151, HEALTHY),
        (HEALTHY, 1, 0, 151, WARNING),
        (HEALTHY, 0, 1, 151, CRITICAL),
        (WARNING, 2, 0, 151, WARNING),
        (HEALTHY, 0, 0, 60, WARNING),  # one process may use every connection
        (HEALTHY, 0, 0, None, HEALTHY),  # unknown limit: no claim
        (CRITICAL, 0, 0, 151, CRITICAL),
    ],
)
def test_judge_health(
    pool: str, cleanup: int, timeouts: int, max_connections: int | None, status: str
) -> None:
    verdict = judge_health(
        Judgement(pool),
        cleanup_errors=cleanup,
        timeouts=timeouts,
        ceiling=60,
        max_connections=max_connections,
        window_seconds=900,
    )
    assert verdict.status == status


@pytest.mark.parametrize(
    ("processes", "max_connections", "warning"),
    [
        (1, 151, None),
        (2, 151, None),  # 120 fit
        (3, 151, "3 processes x 60 connections = 180 exceed the server's max_connections=151"),
        (3, 180, None),  # exactly at the limit
        (4, None, None),  # unknown limit: no claim
        (1, 60, "this process alone may open 60 connections; the server allows 60"),
    ],
)
def test_the_deployments_ceiling_against_max_connections(
    processes: int, max_connections: int | None, warning: str | None
) -> None:
    verdict = judge_health(
        Judgement(HEALTHY),
        cleanup_errors=0,
        timeouts=0,
        ceiling=60,
        max_connections=max_connections,
        window_seconds=900,
        processes=processes,
    )
    assert verdict.warnings == ([warning] if warning else [])
    assert verdict.status == (WARNING if warning else HEALTHY)


@pytest.mark.parametrize(("processes", "status"), [(2, HEALTHY), (3, WARNING)])
def test_db_pool_status_warns_when_the_configured_processes_exceed_the_server(
    make_app: AppFactory, processes: int, status: str
) -> None:
    app = make_app(SERVER_PROCESSES=processes)
    body = app.test_client().get("/db-pool-status").get_json()
    capacity = body["details"]["capacity"]
    limit = capacity["server_max_connections"]
    assert limit == 151  # the server's default; 3 x 60 exceed it, 2 x 60 do not
    assert capacity["configured_processes"] == processes
    assert capacity["deployment_ceiling"] == processes * 60
    assert body["status"] == status
    expected = f"{processes} processes x 60 connections = {processes * 60} exceed"
    assert any(w.startswith(expected) for w in body["warnings"]) == (status == WARNING)


def test_processes_to_exceed_the_server() -> None:
    assert processes_to_exceed(60, 151) == 3  # the seed's note: a few workers exceed 151
    assert processes_to_exceed(60, 180) == 4
    assert processes_to_exceed(0, 151) == 0


def test_error_counts_leave_the_window() -> None:
    now = [1000.0]
    monitor = DBConnectionMonitor(window_seconds=60, clock=lambda: now[0])
    monitor.record_timeout()
    monitor.record_cleanup_error()
    assert (monitor.timeouts.recent(), monitor.cleanup_errors.recent()) == (1, 1)
    now[0] += 61
    assert (monitor.timeouts.recent(), monitor.cleanup_errors.recent()) == (0, 0)
    assert monitor.timeouts.total == 1


# -- the endpoint and real pools ------------------------------------------------


def test_db_pool_status_is_the_seeds_document(client: FlaskClient) -> None:
    response = client.get("/db-pool-status")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["status", "timestamp", "pool", "warnings", "details"]
    assert list(body["pool"]) == [
        "pool_size",
        "checked_out",
        "checked_in",
        "overflow",
        "available",
        "status",
    ]
    assert body["status"] == body["pool"]["status"] == HEALTHY
    assert body["pool"]["pool_size"] == 20
    assert body["pool"]["overflow"] == 0
    assert body["warnings"] == []
    assert body["details"]["engine"] == {"driver": "pymysql", "pool_class": "QueuePool"}
    capacity = body["details"]["capacity"]
    assert capacity["process_ceiling"] == 60
    assert capacity["server_max_connections"] > 0
    assert len(body["timestamp"]) == len("2024-01-01T12:00:00")


def test_health_is_liveness(client: FlaskClient) -> None:
    assert client.get("/health").get_json()["status"] == "ok"


def test_max_connections_is_queried_once(app: Flask) -> None:
    queries: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "max_connections" in statement:
            queries.append(statement)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        monitor = DBConnectionMonitor()
        first = monitor.server_max_connections()
        assert monitor.server_max_connections() == first
        event.remove(db.engine, "before_cursor_execute", record)
    assert isinstance(first, int)
    assert len(queries) == 1


@contextmanager
def holding(app: Flask, count: int) -> Iterator[list[Connection]]:
    """Check ``count`` connections out of the app's pool and give them back."""
    with app.app_context(), ExitStack() as stack:
        yield [stack.enter_context(db.engine.connect()) for _ in range(count)]


@pytest.fixture
def small_app(make_app: AppFactory) -> Flask:
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_size": 2,
            "max_overflow": 1,
            "pool_timeout": 0.2,
            "pool_pre_ping": True,
        },
        POOL_OVERFLOW_CRITICAL_SECONDS=0.3,
    )


def status_of(app: Flask) -> dict:
    return app.test_client().get("/db-pool-status").get_json()


def test_a_real_pool_walks_through_the_alarm_levels(small_app: Flask) -> None:
    assert status_of(small_app)["status"] == HEALTHY
    with holding(small_app, 2):
        report = status_of(small_app)  # this request needs the overflow connection
        assert report["pool"]["checked_out"] == 2
    with holding(small_app, 3):
        report = status_of(small_app)
        assert report["pool"]["available"] == 0
        assert report["pool"]["overflow"] == 1
        assert report["status"] == CRITICAL
        assert any("no connection available" in w for w in report["warnings"])


def test_overflow_in_use_continuously_becomes_critical(small_app: Flask) -> None:
    monitor = DBConnectionMonitor(Thresholds(overflow_critical_seconds=0.3))
    with small_app.app_context():
        with holding(small_app, 3) as connections:  # pool_size 2 + the overflow one
            connections[0].close()  # one back: one available, overflow still open
            first = monitor.get_pool_status()
            assert (first["overflow"], first["available"], first["status"]) == (1, 1, WARNING)
            wait_until(
                lambda: monitor.get_pool_status()["status"] == CRITICAL,
                timeout=3,
                message="overflow in use for 0.3 s to become critical",
            )
        assert monitor.get_pool_status()["status"] == HEALTHY


def test_a_pool_timeout_is_a_503_and_a_critical_alarm(small_app: Flask) -> None:
    with holding(small_app, 3):
        response = small_app.test_client().get("/api/locations")
        assert response.status_code == 503
        assert response.get_json()["error"] == "database_busy"
    report = status_of(small_app)
    assert report["pool"]["status"] == HEALTHY  # the pool itself recovered
    assert report["status"] == CRITICAL
    assert any("time-out" in warning for warning in report["warnings"])
    assert report["details"]["errors"]["timeouts_total"] == 1


def test_log_pool_status_logs_at_the_alarm_level(
    small_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    from reference_app.db_monitor import get_monitor

    with small_app.app_context():
        get_monitor(small_app).log_pool_status()
        with holding(small_app, 3):
            get_monitor(small_app).log_pool_status()
    levels = [r.levelno for r in caplog.records if r.name == "reference_app.db_monitor"]
    assert levels == [logging.INFO, logging.ERROR]
