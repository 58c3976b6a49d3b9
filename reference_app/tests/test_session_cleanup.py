"""Session hygiene: rollback and remove, always; clean-up errors counted."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from reference_app.db_monitor import get_monitor
from reference_app.extensions import db
from reference_app.session_cleanup import cleanup_session

from .support import queue_pool


def test_each_request_gives_its_connection_back(app: Flask, client: FlaskClient) -> None:
    for _ in range(3):
        assert client.get("/api/locations").status_code == 200
    with app.app_context():
        assert queue_pool().checkedout() == 0
        assert not db.session.registry.has()  # nothing left of the requests' sessions


def test_both_cleanup_layers_are_registered(app: Flask) -> None:
    names = [f.__name__ for f in app.teardown_appcontext_funcs]
    assert "shutdown_session" in names
    assert "_teardown_session" in names
    assert "rollback_failed_request" in [f.__name__ for f in app.teardown_request_funcs[None]]


def test_the_exception_path_rolls_back_and_removes(app: Flask) -> None:
    context = app.app_context()
    context.push()
    db.session.execute(
        text("INSERT INTO locations (name, description, created_at) VALUES ('x', '', NOW())")
    )
    session = db.session()
    context.pop(RuntimeError("the context ended with an error"))  # as Flask does on failure
    assert not session.in_transaction()
    with app.app_context():
        assert not db.session.registry.has()
        assert queue_pool().checkedout() == 0
        assert db.session.scalar(text("SELECT COUNT(*) FROM locations")) == 0


def test_cleanup_of_an_unused_context_is_a_no_op(app: Flask) -> None:
    with app.app_context():
        assert cleanup_session() is True
        assert not db.session.registry.has()


def test_a_failed_cleanup_is_logged_and_counted(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A real failure: the server kills the session's connection mid-transaction,
    so the teardown's rollback fails. The error is counted, not hidden."""
    monitor = get_monitor(app)
    with app.app_context():
        victim = db.session.execute(text("SELECT CONNECTION_ID()")).scalar_one()
        with db.engine.connect() as other:
            other.execute(text(f"KILL CONNECTION {victim}"))
    assert monitor.cleanup_errors.total == 1
    failures = [r for r in caplog.records if r.name == "reference_app.session_cleanup"]
    assert failures
    assert failures[0].levelno == logging.ERROR
    with app.app_context():
        assert queue_pool().checkedout() == 0  # the dead connection was discarded
        report = get_monitor(app).check_pool_health()
    assert report["status"] == "warning"
    assert any("clean-up error" in warning for warning in report["warnings"])
