"""The seam's proof: the engine judges a PostgreSQL server as it judges a MySQL one.

For each family, in process, a real server the test starts through ``family.launch``,
the family's monitor, and the engine's real ``Tracker`` and ``Detector`` - nothing of
the engine knows which family it talks to. PyMySQL for MySQL, psycopg for PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pytest_dbleak import families
from pytest_dbleak.engine.database import Database
from pytest_dbleak.engine.detector import Detector
from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.results import CHECKED_OUT, SERVER_CONNECTION, CheckResult
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.families.base import Family, RunningServer, ServerMonitor

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(backend="process", cache_dir=os.environ.get("DBLEAK_CACHE_DIR"))
# A session's database and user, and how to ask the server whether each still exists.
EXISTS = {
    "mysql": (
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        "SELECT COUNT(*) FROM mysql.user WHERE User = %s",
    ),
    "postgresql": (
        "SELECT count(*) FROM pg_database WHERE datname = %s",
        "SELECT count(*) FROM pg_roles WHERE rolname = %s",
    ),
}


@dataclass
class Session:
    family: Family
    running: RunningServer
    monitor: ServerMonitor
    database: Database

    def connect(self, **extra: Any) -> Any:
        """A raw driver connection as the session's user (autocommit off)."""
        if self.family.name == "mysql":
            import pymysql

            return pymysql.connect(**self.database.connect_kwargs(), **extra)
        import psycopg

        return psycopg.connect(**self.database.connect_kwargs(), **extra)

    def server_id(self, conn: Any) -> int:
        """The server's id of a raw connection, as the family's driver tells it."""
        return int(conn.thread_id() if self.family.name == "mysql" else conn.info.backend_pid)

    def exists(self, name: str) -> tuple[int, int]:
        query = self.monitor.query  # type: ignore[attr-defined]  # both monitors have it
        db_sql, user_sql = EXISTS[self.family.name]
        return (int(query(db_sql, (name,))[0][0]), int(query(user_sql, (name,))[0][0]))


def _new_name() -> str:
    return f"dbleak_ctr_{secrets.token_hex(3)}"


@pytest.fixture(scope="module", params=["mysql", "postgresql"])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    family = families.get(request.param)
    pytest.importorskip("pymysql" if family.name == "mysql" else "psycopg")
    try:
        running = family.launch(SETTINGS, Redactor()).wait()
    except DbleakError as exc:
        pytest.skip(f"no {family.title} server to start here: {exc}")
    monitor = family.monitor(running)
    name, password = _new_name(), secrets.token_hex(16)
    monitor.claim(name)
    monitor.create_database(name, name, password, "%")
    endpoint = running.endpoint
    database = family.database(
        name, name, password, endpoint.host, endpoint.port, local=endpoint.is_local
    )
    yield Session(family, running, monitor, database)
    monitor.drop_database(name, name, "%")
    try:
        assert Session(family, running, monitor, database).exists(name) == (0, 0)
    finally:
        monitor.close()
        running.stop()


@pytest.fixture
def detector(session: Session) -> Iterator[Detector]:
    tracker = Tracker()
    tracker.install()
    try:
        yield Detector(tracker, session.monitor, frozenset({session.database.user}), ROOT)
    finally:
        tracker.uninstall()


def judge(detector: Detector, body: Callable[[], Any]) -> CheckResult:
    window = detector.begin()
    body()
    return detector.finish(window, "contract", allow=0, settle=2.0)


def _poll(predicate: Callable[[], Any]) -> Any:
    """Poll the server until `predicate` holds (it offers no event to await); a bound far
    beyond any normal run turns a regression into a failure instead of a hang.

    Every 0.2 s: MySQL refreshes information_schema.INNODB_TRX only after 0.1 s without
    a reader, so a tighter loop would keep a lock wait out of it for good."""
    deadline = time.monotonic() + 60
    while not (value := predicate()):
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.2)
    return value


def test_a_clean_window_has_no_leak(session: Session, detector: Detector) -> None:
    def body() -> None:
        engine = sa.create_engine(session.database.url())
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        engine.dispose()

    result = judge(detector, body)
    assert result.leaks == ()


def test_a_connection_kept_checked_out_is_a_checked_out_leak(
    session: Session, detector: Detector
) -> None:
    engine = sa.create_engine(session.database.url())
    kept: list[sa.Connection] = []
    try:
        result = judge(detector, lambda: kept.append(engine.connect()))
        ident = session.server_id(kept[0].connection.dbapi_connection)
        assert [(leak.kind, leak.connection_ids) for leak in result.leaks] == [
            (CHECKED_OUT, [ident])
        ]
    finally:
        for conn in kept:
            conn.close()
        engine.dispose()


def test_a_raw_driver_connection_left_open_is_a_server_connection_leak(
    session: Session, detector: Detector
) -> None:
    kept: list[Any] = []
    try:
        result = judge(detector, lambda: kept.append(session.connect()))
        (leak,) = result.leaks
        assert (leak.kind, leak.connection_ids) == (SERVER_CONNECTION, [session.server_id(kept[0])])
        # The driver's connect was traced: the leak names the line that opened it.
        assert leak.site is not None
        assert leak.site.file.endswith("test_family_contract.py")
    finally:
        for conn in kept:
            conn.close()


def test_a_forgotten_transaction_blocks_a_statement_until_the_statement_is_ended(
    session: Session,
) -> None:
    with session.connect(autocommit=True) as setup:
        run = setup.execute if session.family.name == "postgresql" else setup.cursor().execute
        run("DROP TABLE IF EXISTS held")
        run("CREATE TABLE held (id int PRIMARY KEY, v int)")
        run("INSERT INTO held VALUES (1, 0)")
    holder = session.connect()  # autocommit off: its UPDATE keeps the row locked
    waiter = session.connect(autocommit=True)
    holder.cursor().execute("UPDATE held SET v = 1 WHERE id = 1")
    holder_id, waiter_id = session.server_id(holder), session.server_id(waiter)
    monitor = session.monitor
    trx = monitor.transactions({holder_id, waiter_id})
    assert set(trx) == {holder_id}
    assert trx[holder_id].started
    assert trx[holder_id].thread_id == holder_id
    # The tables it keeps locked (MariaDB: METADATA_LOCK_INFO, which the process backend
    # loads; PostgreSQL: pg_locks).
    assert [name.rsplit(".", 1)[-1] for name in trx[holder_id].tables] == ["held"]
    failed: list[BaseException] = []

    def blocked() -> None:
        try:
            waiter.cursor().execute("UPDATE held SET v = 2 WHERE id = 1")
        except Exception as exc:  # noqa: BLE001 - each driver has its own error for it
            failed.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    try:
        waits = _poll(
            lambda: failed or [w for w in monitor.waiting_statements(0) if w.id == waiter_id]
        )
        assert not failed, failed
        assert waits[0].user == session.database.user
        assert "UPDATE held" in (waits[0].info or "")
        holders = monitor.idle_in_transaction(0)
        assert holder_id in {h.id for h in holders}
        assert waiter_id not in {h.id for h in holders}
        monitor.end_statement(waiter_id)
        thread.join(60)
        assert not thread.is_alive(), "the statement still waits"
        assert failed, "the blocked statement was never ended"
        assert not [w for w in monitor.waiting_statements(0) if w.id == waiter_id]
    finally:
        holder.close()
        thread.join(60)
        waiter.close()


def test_drop_database_takes_the_database_and_its_user_with_their_connections(
    session: Session,
) -> None:
    name, password = _new_name(), secrets.token_hex(16)
    monitor = session.monitor
    monitor.create_database(name, name, password, "%")
    other = session.family.database(
        name, name, password, session.database.host, session.database.port, local=True
    )
    assert session.exists(name) == (1, 1)
    left_open = Session(session.family, session.running, monitor, other).connect()
    try:
        monitor.drop_database(name, name, "%")
        assert session.exists(name) == (0, 0)
    finally:
        left_open.close()
