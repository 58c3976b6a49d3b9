"""The leak-regression suite's fixtures, on top of ../conftest.py.

The application is the real one with the seed's pool (pool_size 20,
max_overflow 40) and one change: ``pool_timeout`` is 1 s instead of 30 s.
A clean run never waits for a connection (the stress runs keep at most 50
requests in flight, below the ceiling of 60); a leaking run exhausts the pool,
and then every further checkout would wait 30 s before its 503. With 1 s a
leak still fails the test, in seconds instead of minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask

from reference_app.config import SEED_ENGINE_OPTIONS
from reference_app.db_monitor import get_monitor
from reference_app.extensions import db

from ..conftest import AppFactory, _empty_tables

POOL_TIMEOUT_SECONDS = 1


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The application of a test, on empty tables (overrides ../conftest.py's)."""
    application = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={**SEED_ENGINE_OPTIONS, "pool_timeout": POOL_TIMEOUT_SECONDS}
    )
    _empty_tables(application)
    return application


@dataclass(frozen=True)
class PoolFacts:
    """What /db-pool-status and the server say after a stress run."""

    status: str
    checked_out: int
    checked_in: int
    overflow: int
    ceiling: int  # pool_size + max_overflow
    pool_size: int
    server_connections: int  # this session user's connections on the server


@pytest.fixture
def pool_facts(app: Flask, server_connections: Callable[[], int]) -> Callable[[], PoolFacts]:
    """Read ``/db-pool-status`` (through the app itself) and count server connections."""

    def read() -> PoolFacts:
        response = app.test_client().get("/db-pool-status")
        assert response.status_code == 200
        report: dict[str, Any] = response.get_json()
        pool = report["pool"]
        capacity = report["details"]["capacity"]
        return PoolFacts(
            status=report["status"],
            checked_out=pool["checked_out"],
            checked_in=pool["checked_in"],
            overflow=pool["overflow"],
            ceiling=capacity["process_ceiling"],
            pool_size=pool["pool_size"],
            server_connections=server_connections(),
        )

    return read


def checked_out_now(app: Flask) -> int:
    with app.app_context():
        return get_monitor(app).snapshot().checked_out


@contextmanager
def app_session(app: Flask) -> Iterator[None]:
    """An app context for the test's own queries that removes its session itself.

    The app's teardown would do it, but a regression such as
    ``no_request_cleanup`` takes that teardown away: the test's own reads must
    not then be what the detector blames.
    """
    with app.app_context():
        try:
            yield
        finally:
            db.session.remove()


# -- the main job's closing statement (proof.py) ----------------------------------------
# Read through the plugin's published hooks (pytest_dbleak.hooks), never its internals.
_ITEMS = pytest.StashKey[list[pytest.Item]]()
_SERVER = pytest.StashKey[str]()
_RESULTS = pytest.StashKey[list[Any]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_ITEMS] = list(session.items)


@pytest.hookimpl(optionalhook=True)  # the hooks exist only while pytest-dbleak is loaded
def pytest_dbleak_server(config: pytest.Config, server: Any) -> None:
    config.stash[_SERVER] = f"{server.backend} backend, server {server.version}"


@pytest.hookimpl(optionalhook=True)
def pytest_dbleak_sessionfinish(session: pytest.Session, results: list[Any]) -> None:
    session.config.stash[_RESULTS] = results  # only under --dbleak


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """`pytest --dbleak reference_app/tests/leaks` ends with what it showed."""
    from . import proof

    items = config.stash.get(_ITEMS, [])
    server = config.stash.get(_SERVER, None)
    checked = config.stash.get(_RESULTS, None)
    if not proof.is_main_job(config, items) or checked is None or server is None:
        return
    leaking = sum(1 for r in checked if r.leaks)
    terminalreporter.write_sep("=", "reference app: what this run showed", bold=True)
    width = config.get_terminal_writer().fullwidth
    for line in proof.statement(items, leaking, exitstatus, len(checked), server, width):
        terminalreporter.write_line(line)
