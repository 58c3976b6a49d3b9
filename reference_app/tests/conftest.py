"""Shared fixtures: one schema per session, one application per test.

Every application a test builds is released in teardown with ``shutdown_app``:
an app that is never disposed keeps its pool's connections open, and the leak
detector fails the test that did it.

``REFERENCE_APP_REGRESSIONS=name[,name]`` installs the seed's bugs
(``regressions.py``) on every app ``make_app`` builds; an unknown name is a
usage error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.serving import BaseWSGIServer, make_server

from reference_app import create_app, shutdown_app
from reference_app.extensions import db
from reference_app.serving import RequestHandler
from reference_app.tests.config import testing_settings

from . import regressions
from .support import SocketClients, World, build_world

AppFactory = Callable[..., Flask]


def pytest_configure(config: pytest.Config) -> None:
    try:
        regressions.regressions_from_env()
    except regressions.UnknownRegression as error:
        raise pytest.UsageError(f"{regressions.ENV_VAR}: {error}") from None


@pytest.fixture(scope="session")
def app_settings(dbleak_mysql_url: str) -> dict[str, Any]:
    """TestingConfig's settings on the session's own database."""
    settings = testing_settings()
    settings["SQLALCHEMY_DATABASE_URI"] = dbleak_mysql_url
    return settings


@pytest.fixture(scope="session")
def schema(app_settings: dict[str, Any]) -> None:
    """Create the tables once per session, with an app released right after.

    The database is first given latin1 as its default, as a stock MariaDB makes
    a bare ``CREATE DATABASE``: the tables must declare utf8mb4 themselves."""
    app = create_app(app_settings)
    try:
        with app.app_context():
            db.drop_all()
            with db.engine.begin() as connection:
                name = connection.execute(text("SELECT DATABASE()")).scalar_one()
                connection.execute(
                    text(f"ALTER DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
                )
            db.create_all()
    finally:
        shutdown_app(app)


def _empty_tables(app: Flask) -> None:
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()


@pytest.fixture
def make_app(schema: None, app_settings: dict[str, Any]) -> Iterator[AppFactory]:
    """Build applications with settings overrides, with the seed's bugs named in
    the environment (or in ``regressions_on``) installed; all are released in teardown."""
    apps: list[Flask] = []

    def factory(*, regressions_on: Iterable[str] = (), **overrides: Any) -> Flask:
        app = create_app({**app_settings, **overrides})
        apps.append(app)
        return regressions.install(app, regressions.regressions_from_env() | set(regressions_on))

    yield factory
    for app in reversed(apps):
        shutdown_app(app)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The application of a test, on empty tables."""
    application = make_app()
    _empty_tables(application)
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def world(app: Flask) -> World:
    """An admin, two drivers with buggies, two guests and two locations."""
    return build_world(app)


@pytest.fixture
def served_app(app: Flask) -> Iterator[str]:
    """The app on a real port (HTTP and Socket.IO), stopped cleanly. Not named
    live_server: pytest-django (installed for the Django tests) treats a fixture of that
    name as its own and skips the test outside a Django project."""
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=RequestHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="live-server"
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sockets(served_app: str) -> Iterator[SocketClients]:
    """Real python-socketio clients; any still connected are closed at the end."""
    clients = SocketClients(served_app)
    yield clients
    clients.disconnect_all()


@pytest.fixture
def server_connections(app: Flask) -> Callable[[], int]:
    """Count this session user's connections on the server (a real query)."""

    def count() -> int:
        with app.app_context(), db.engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                        "WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"
                    )
                ).scalar_one()
            )

    return count
