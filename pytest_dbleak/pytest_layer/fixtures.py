"""The plugin's fixtures. They work with and without ``--dbleak``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_dbleak.engine.database import Database
from pytest_dbleak.engine.errors import DbleakError, missing_extra
from pytest_dbleak.engine.runtime import Runtime
from pytest_dbleak.families.base import ProcessRow, ServerInfo
from pytest_dbleak.pytest_layer import family_choice
from pytest_dbleak.pytest_layer.manager import MANAGER, DbleakManager
from pytest_dbleak.reports import reporting


def _manager(request: pytest.FixtureRequest) -> DbleakManager:
    return request.config.stash[MANAGER]


def _fail_setup(exc: DbleakError) -> None:
    # The server is unusable for every test: end the run with a usage error, once.
    pytest.exit(f"dbleak: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


def _runtime(request: pytest.FixtureRequest, family: str | None) -> Runtime:
    """The session's runtime, when it serves `family` (None: whichever it serves).

    The family is chosen from the fixtures the collected tests request; only a fixture
    asked for by name at run time (``request.getfixturevalue``) can miss it.
    """
    runtime = _manager(request).runtime
    if family is not None and runtime.family.name != family:
        _fail_setup(
            DbleakError(
                f"{request.fixturename} needs a {family_choice.TITLES[family]} server, but "
                f"this session checks {runtime.family.title} (chosen from the fixtures its "
                "tests request; --dbleak-family sets it)"
            )
        )
    return runtime


def _server(request: pytest.FixtureRequest, family: str) -> ServerInfo:
    try:
        return _runtime(request, family).server().info
    except DbleakError as exc:
        _fail_setup(exc)
        raise


def _database(request: pytest.FixtureRequest, family: str | None) -> Database:
    try:
        return _runtime(request, family).database()
    except DbleakError as exc:
        _fail_setup(exc)
        raise


@pytest.fixture(scope="session")
def dbleak_server(request: pytest.FixtureRequest) -> ServerInfo:
    """Facts about the session's MySQL server: backend, host, port, socket, version."""
    return _server(request, "mysql")


@pytest.fixture(scope="session")
def dbleak_mysql_url(request: pytest.FixtureRequest, dbleak_server: ServerInfo) -> str:
    """SQLAlchemy URL of a fresh database that belongs to this session's own user."""
    return _database(request, "mysql").url()


@pytest.fixture(scope="session")
def dbleak_postgresql_server(request: pytest.FixtureRequest) -> ServerInfo:
    """Facts about the session's PostgreSQL server: backend, host, port, socket, version."""
    return _server(request, "postgresql")


@pytest.fixture(scope="session")
def dbleak_postgresql_url(
    request: pytest.FixtureRequest, dbleak_postgresql_server: ServerInfo
) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://``) of a fresh database that this session's
    own role owns, dropped at the end."""
    return _database(request, "postgresql").url()


@pytest.fixture(scope="session")
def dbleak_postgresql_database(
    request: pytest.FixtureRequest, dbleak_postgresql_server: ServerInfo
) -> Database:
    """The session's PostgreSQL database for any driver: ``.url("asyncpg")``,
    ``.connect_kwargs("psycopg2")`` (psycopg, psycopg2, asyncpg, pg8000)."""
    return _database(request, "postgresql")


@dataclass(frozen=True)
class Snapshot:
    """What the server and the pools hold right now."""

    server_connections: list[ProcessRow]
    threads_connected: int
    checked_out: int


@dataclass(frozen=True)
class PoolStatus:
    """Counts of one pool, from pool events: also for NullPool and StaticPool."""

    pool_class: str
    checked_out: int
    idle: int

    @property
    def open(self) -> int:
        return self.checked_out + self.idle


class DbleakHandle:
    """Explicit leak checks inside a test (the ``dbleak`` fixture)."""

    def __init__(self, manager: DbleakManager) -> None:
        self._manager = manager
        self._detector = manager.runtime.checks().detector

    @property
    def url(self) -> str:
        """The session database's SQLAlchemy URL (MySQL or PostgreSQL, as the session)."""
        return self._manager.runtime.database().url()

    def snapshot(self) -> Snapshot:
        detector = self._detector
        snap = detector.snapshot()
        rows = [r for r in snap.rows.values() if detector.users is None or r.user in detector.users]
        return Snapshot(rows, snap.threads_connected, detector.tracker.checked_out_count())

    def pool_status(self, engine_or_pool: Any) -> PoolStatus:
        pool = getattr(engine_or_pool, "pool", engine_or_pool)
        state = self._detector.tracker.state_of(pool)
        conns = list(state.open.values())
        out = sum(1 for c in conns if c.checkout is not None)
        return PoolStatus(state.pool_class, out, len(conns) - out)

    @contextmanager
    def assert_no_leaks(self, *, allow: int = 0, settle: float | None = None) -> Iterator[None]:
        """Fail the test if the block leaves a connection, engine or transaction behind."""
        settings = self._manager.settings
        window = self._detector.begin()
        yield
        result = self._detector.finish(
            window,
            "assert_no_leaks()",
            allow=allow,
            settle=settings.settle_timeout if settle is None else settle,
            patient=settle is not None,
        )
        if result.leaked > allow:
            text = self._manager.redact(reporting.failure_text(result))
            pytest.fail(text + "\n" + reporting.section_text(result), pytrace=False)


@pytest.fixture
def dbleak(request: pytest.FixtureRequest) -> DbleakHandle:
    """Handle for explicit checks: snapshot(), pool_status(engine), assert_no_leaks()."""
    _database(request, None)
    return DbleakHandle(_manager(request))


# -- stress fixtures: each pairs with the marker of the same name ---------------------
@contextmanager
def _stress_extra(fixture: str) -> Iterator[None]:
    """Without the stress extra, the run ends with one line naming it, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, "stress", fixture)
        if message is None:
            raise
        pytest.exit(f"dbleak: {message}", returncode=pytest.ExitCode.USAGE_ERROR)


class _Stress:
    """Runs a stress runner with the marker's settings and records the runs for the
    leak report's rate ("4 connections leaked over 100 runs (1 in 25)")."""

    kind = ""

    def __init__(self, request: pytest.FixtureRequest, settings: Any) -> None:
        self._item = request.node
        self.settings = settings

    def _run(self, runs: int, call: Callable[[], Any]) -> Any:
        """Run the load, and count its runs for the rate even when it raised."""
        try:
            with _stress_extra(self.kind):
                return call()
        finally:
            # Told to the test's check, which the manager owns (the fixtures write no
            # stash key of it).
            self._item.config.stash[MANAGER].checks.count_runs(self._item, self.kind, runs)


class JobsStress(_Stress):
    """``dbleak_jobs.run(*callables)``: each callable `runs` times on `threads` threads."""

    kind = "dbleak_jobs"

    def run(self, *callables: Any) -> Any:
        with _stress_extra(self.kind):
            from pytest_dbleak.stress import JobRunner

        s = self.settings
        runner = JobRunner(runs=s.runs, threads=s.threads)
        return self._run(s.runs * len(callables), lambda: runner.run(*callables))


class SocketChurnStress(_Stress):
    """``dbleak_socket_churn.run(app, socketio, ...)``: N real Socket.IO clients come and go."""

    kind = "dbleak_socket_churn"

    def run(
        self,
        app: Any,
        socketio: Any,
        *,
        namespace: str = "/",
        auth: Any = None,
        on_connect: Any = None,
    ) -> Any:
        with _stress_extra(self.kind):
            from pytest_dbleak.stress import SocketChurnRunner

        s = self.settings
        runner = SocketChurnRunner(clients=s.clients, concurrency=s.concurrency, timeout=s.timeout)
        return self._run(
            s.clients,
            lambda: runner.run(
                app, socketio, namespace=namespace, auth=auth, on_connect=on_connect
            ),
        )


class HttpLoadStress(_Stress):
    """``dbleak_http_load.run(app, path, ...)``: N requests, C at a time, on a real server."""

    kind = "dbleak_http_load"

    def run(
        self,
        app: Any,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
    ) -> Any:
        with _stress_extra(self.kind):
            from pytest_dbleak.stress import HttpLoadRunner

        s = self.settings
        runner = HttpLoadRunner(requests=s.requests, concurrency=s.concurrency, timeout=s.timeout)
        return self._run(
            s.requests, lambda: runner.run(app, path, method=method, headers=headers, body=body)
        )


def _mark_settings(request: pytest.FixtureRequest, name: str) -> Any:
    from pytest_dbleak.pytest_layer import marks
    from pytest_dbleak.pytest_layer.checks import MARKS

    values = request.node.stash.get(MARKS, {})
    return values.get(name) or marks.MARKERS[name]()


@pytest.fixture
def dbleak_jobs(request: pytest.FixtureRequest) -> JobsStress:
    """Background-job stress; settings from ``@pytest.mark.dbleak_jobs(runs, threads)``."""
    return JobsStress(request, _mark_settings(request, "dbleak_jobs"))


@pytest.fixture
def dbleak_socket_churn(request: pytest.FixtureRequest) -> SocketChurnStress:
    """Socket.IO churn; settings from ``@pytest.mark.dbleak_socket_churn(clients=...)``."""
    return SocketChurnStress(request, _mark_settings(request, "dbleak_socket_churn"))


@pytest.fixture
def dbleak_http_load(request: pytest.FixtureRequest) -> HttpLoadStress:
    """HTTP load; settings from ``@pytest.mark.dbleak_http_load(requests, concurrency)``."""
    return HttpLoadStress(request, _mark_settings(request, "dbleak_http_load"))


# -- the session database for every driver (issue 10) ---------------------------------
@pytest.fixture(scope="session")
def dbleak_database(request: pytest.FixtureRequest, dbleak_server: ServerInfo) -> Database:
    """The session database for any driver: ``.url(driver="aiomysql")``,
    ``.connect_kwargs(driver="mysqldb")``, each with that driver's "no TLS" spelling."""
    return _database(request, "mysql")
