"""PostgreSQL's drivers traced in process, against a real ``postgres`` these tests start:
each driver's connect reports the connection with the user's line, its id is the
backend pid the server gives (read without a round trip), its transaction state is the
driver's own, its close is seen; restore() and verify() handle psycopg2's module-level
hook like the class methods.

The pytester acceptance tests of the same are in tests/acceptance/test_postgresql_drivers.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")
psycopg2 = pytest.importorskip("psycopg2")
asyncpg = pytest.importorskip("asyncpg")
pg8000_dbapi = pytest.importorskip("pg8000.dbapi")

from pytest_dbleak.engine.database import Database  # noqa: E402
from pytest_dbleak.engine.drivers import (  # noqa: E402
    DriverTracer,
    in_transaction,
    is_real_connection,
    server_thread_id,
)
from pytest_dbleak.engine.settings import Settings  # noqa: E402
from pytest_dbleak.engine.stacks import Frame  # noqa: E402
from pytest_dbleak.families.postgresql.embedded import PgServer, find_postgres, start_postgres  # noqa: E402

CACHE = Path(Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache)
THIS_FILE = os.path.abspath(__file__)


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    """The admin role's ``postgres`` database on a server of these tests' own."""
    binary = find_postgres(None)
    if binary is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    server: PgServer = start_postgres(binary, CACHE, 30)
    ep = server.endpoint
    yield Database("postgres", ep.user, ep.password, "127.0.0.1", ep.port, family="postgresql")
    server.stop()


class Events:
    """What the tracer reported: connections with their stacks, and closed ids."""

    def __init__(self) -> None:
        self.opened: list[tuple[Any, tuple[Frame, ...]]] = []
        self.closed: list[int | None] = []
        self.tracer = DriverTracer(self.connected, self.closed.append)

    def connected(self, conn: Any, stack: tuple[Frame, ...]) -> None:
        self.opened.append((conn, stack))

    def line_of_connect(self) -> int:
        """The line of this file that the (single) reported connect came from."""
        [(_, stack)] = self.opened
        return next(line for file, line, _ in stack if file == THIS_FILE)


@pytest.fixture
def events() -> Iterator[Events]:
    events = Events()
    events.tracer.trace_imported()
    yield events
    events.tracer.restore()


def here() -> int:
    return sys._getframe(1).f_lineno


def test_psycopg2_is_traced_through_its_module_connect_its_close_read_from_its_flag(
    database: Database, events: Events
) -> None:
    line = here() + 1
    conn = psycopg2.connect(**database.connect_kwargs("psycopg2"))
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        [(pid,)] = cur.fetchall()  # a statement of psycopg2's: a transaction began
        assert events.line_of_connect() == line
        assert is_real_connection(conn)
        assert server_thread_id(conn) == pid
        assert in_transaction(conn) is True
        conn.commit()
        assert in_transaction(conn) is False
    finally:
        conn.close()
    assert server_thread_id(conn) is None
    assert in_transaction(conn) is None


def test_a_psycopg2_close_is_reported_when_the_tracer_next_looks(
    database: Database, events: Events
) -> None:
    conn = psycopg2.connect(**database.connect_kwargs("psycopg2"))
    pid = server_thread_id(conn)
    assert events.tracer.verify() == []
    assert events.closed == []  # still open
    conn.close()
    assert events.closed == []  # psycopg2's close() is C: nothing wraps it
    assert events.tracer.verify() == []
    assert events.closed == [pid]
    events.tracer.verify()
    assert events.closed == [pid], "reported once"


def test_psycopg2_connect_bound_by_name_before_tracing_is_traced_too(
    database: Database, events: Events
) -> None:
    from psycopg2 import connect  # as a module would bind it at import

    conn = connect(**database.connect_kwargs("psycopg2"))
    conn.close()
    assert [c for c, _ in events.opened] == [conn]


def test_pg8000_reads_its_backend_key_data_and_its_ready_for_query_status(
    database: Database, events: Events
) -> None:
    line = here() + 1
    conn = pg8000_dbapi.connect(**database.connect_kwargs("pg8000"))
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    [(pid,)] = cur.fetchall()
    assert events.line_of_connect() == line
    assert is_real_connection(conn)
    assert server_thread_id(conn) == pid
    assert in_transaction(conn) is True  # pg8000's DBAPI begins one before a statement
    conn.commit()
    assert in_transaction(conn) is False
    conn.close()
    assert events.closed == [pid]
    assert server_thread_id(conn) is None


async def asyncpg_round(database: Database) -> tuple[int, int, list[bool | None]]:
    line = here() + 1
    conn = await asyncpg.connect(**database.connect_kwargs("asyncpg"))
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    states = [in_transaction(conn)]
    await conn.execute("BEGIN")
    states.append(in_transaction(conn))
    await conn.execute("COMMIT")
    states.append(in_transaction(conn))
    assert server_thread_id(conn) == pid
    assert is_real_connection(conn)
    await conn.close()
    return line, pid, states


def test_asyncpg_names_the_users_await_line_and_its_coroutine_close_is_seen(
    database: Database, events: Events
) -> None:
    line, pid, states = asyncio.run(asyncpg_round(database))
    assert events.line_of_connect() == line
    assert states == [False, True, False]
    assert events.closed == [pid]


async def asyncpg_terminated(database: Database) -> int:
    conn = await asyncpg.connect(**database.connect_kwargs("asyncpg"))
    pid = server_thread_id(conn)
    conn.terminate()
    assert server_thread_id(conn) is None
    assert pid is not None
    return pid


def test_asyncpg_terminate_is_a_close(database: Database, events: Events) -> None:
    pid = asyncio.run(asyncpg_terminated(database))
    assert events.closed == [pid]


def test_psycopg_3_still_reports_its_backend_pid(database: Database, events: Events) -> None:
    with psycopg.connect(**database.connect_kwargs("psycopg")) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert server_thread_id(conn) == pid
    assert events.closed == [pid]


def test_restore_puts_psycopg2s_connect_back_and_verify_rewraps_a_removed_one() -> None:
    # Under `pytest --dbleak` the outer run's own tracer has wrapped it already: `original`
    # is then that wrapper, and this tracer wraps it again.
    original = psycopg2._connect
    events = Events()
    events.tracer.trace_imported()
    assert psycopg2._connect is not original
    events.tracer.restore()
    assert psycopg2._connect is original

    def theirs(*args: Any, **kwargs: Any) -> Any:  # a test's monkeypatch, over ours
        return original(*args, **kwargs)

    events.tracer.trace_imported()
    try:
        psycopg2._connect = theirs
        assert events.tracer.verify() == ["psycopg2._connect"]
        assert psycopg2._connect is not theirs  # wrapped again, around theirs
    finally:
        events.tracer.restore()
        psycopg2._connect = original
