"""The PostgreSQL family's building blocks against a real ``postgres`` they start: the
process backend (template, reaper, login), the admin monitor's snapshot of client
backends, transactions, lock waits, and provisioning under the session lock.

In process, with a real server and real psycopg connections; the pytester acceptance
tests of the family come with its checks.
"""

from __future__ import annotations

import dataclasses
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from pytest_dbleak.engine.errors import DbleakError, ServerGoneError  # noqa: E402
from pytest_dbleak.engine.settings import Settings  # noqa: E402
from pytest_dbleak.families.postgresql.embedded import PgServer, find_postgres, start_postgres  # noqa: E402
from pytest_dbleak.families.postgresql.monitor import PgMonitor  # noqa: E402

CACHE = Path(Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache)
SESSION = "dbleak_main_a1b2c3"
PASSWORD = "session-password"


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    binary = find_postgres(None)
    if binary is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    running = start_postgres(binary, CACHE, 30)
    yield running
    running.stop()
    assert not running.root.exists(), "the reaper left the server's folder behind"


@pytest.fixture(scope="module")
def monitor(server: PgServer) -> Iterator[PgMonitor]:
    monitor = PgMonitor(server.endpoint, f"127.0.0.1:{server.endpoint.port}")
    monitor.claim(SESSION)
    monitor.create_database(SESSION, SESSION, PASSWORD, "%")
    yield monitor
    monitor.drop_database(SESSION, SESSION, "%")
    monitor.close()


def _poll(predicate: Callable[[], Any]) -> Any:
    """Poll the server until `predicate` holds (it offers no event to await); a bound far
    beyond any normal run turns a regression into a failure instead of a hang."""
    deadline = time.monotonic() + 60
    while not (value := predicate()):
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.001)
    return value


def connect(server: PgServer, **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=server.endpoint.port,
        user=SESSION,
        password=PASSWORD,
        dbname=SESSION,
        **kwargs,
    )


def test_a_client_backend_of_the_session_role_is_in_the_snapshot_and_leaves_with_its_close(
    server: PgServer, monitor: PgMonitor
) -> None:
    conn = connect(server, autocommit=True)
    pid = conn.info.backend_pid
    row = monitor.snapshot().rows[pid]
    assert (row.user, row.db, row.command, row.state) == (SESSION, SESSION, "Sleep", "idle")
    assert row.host.startswith("127.0.0.1:")
    assert monitor.connection_id not in monitor.snapshot().rows  # never its own
    conn.close()
    # A closed backend leaves pg_stat_activity within milliseconds.
    _poll(lambda: pid not in monitor.snapshot().rows)


def test_idle_in_transaction_says_when_it_began_and_an_aborted_one_has_no_start(
    server: PgServer, monitor: PgMonitor
) -> None:
    with connect(server) as conn:
        conn.execute("SELECT 1")
        pid = conn.info.backend_pid
        began = monitor.transactions({pid})
        assert began.keys() == {pid}
        assert began[pid].started == monitor.snapshot().rows[pid].trx_started
        assert monitor.snapshot().rows[pid].state == "idle in transaction"
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        aborted = monitor.transactions({pid})[pid]
        assert aborted.state == "idle in transaction (aborted)"
        assert aborted.trx_id != began[pid].trx_id  # its start is gone: since it went idle
        assert monitor.snapshot().rows[pid].trx_started is None
        assert pid in {h.id for h in monitor.idle_in_transaction(0)}


def test_an_open_transaction_names_the_tables_it_holds_locks_on(
    server: PgServer, monitor: PgMonitor
) -> None:
    with connect(server, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS ledger (id INT PRIMARY KEY)")
    with connect(server) as conn:
        conn.execute("INSERT INTO ledger VALUES (1) ON CONFLICT DO NOTHING")
        trx = monitor.transactions({conn.info.backend_pid})[conn.info.backend_pid]
        assert trx.tables == ("public.ledger",)  # the table, not its primary key index
        assert trx.rows_modified == 1
        assert trx.describe().endswith(", 1 row modified, locks on public.ledger")
        conn.rollback()


def test_a_statement_behind_a_forgotten_transaction_is_seen_with_its_blocker_and_cancelled(
    server: PgServer, monitor: PgMonitor
) -> None:
    with connect(server, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS held (id int)")
    holder = connect(server)
    holder.execute("SELECT * FROM held")  # a read: its transaction holds a share lock
    waiter = connect(server, autocommit=True)
    failed: list[BaseException] = []

    def drop() -> None:
        try:
            waiter.execute("DROP TABLE held")
        except psycopg.Error as exc:
            failed.append(exc)

    thread = threading.Thread(target=drop)
    thread.start()
    (wait,) = _poll(lambda: monitor.lock_waits(0))
    assert (wait.pid, wait.blockers) == (waiter.info.backend_pid, (holder.info.backend_pid,))
    assert wait.statement == "DROP TABLE held"
    monitor.end_statement(wait.pid)
    thread.join()
    assert isinstance(failed[0], psycopg.errors.QueryCanceled)
    monitor.end_connection(holder.info.backend_pid)
    waiter.close()
    holder.close()


def test_the_sweep_drops_what_a_killed_session_left_and_never_a_live_one(
    server: PgServer, monitor: PgMonitor
) -> None:
    other = PgMonitor(server.endpoint, "other")
    other.claim("dbleak_gw1_d4e5f6")
    other.create_database("dbleak_gw1_d4e5f6", "dbleak_gw1_d4e5f6", "pw", "%")
    assert "dbleak_gw1_d4e5f6" not in monitor.sweep_orphans()  # alive
    gone = other.connection_id
    other.close()  # the session ends without dropping anything
    # Its lock is free once its backend has exited, a few milliseconds after the close.
    _poll(lambda: gone not in monitor.snapshot().rows)
    # Its own session (claimed on this connection) is never swept.
    assert monitor.sweep_orphans() == ["dbleak_gw1_d4e5f6"]
    names = {r[0] for r in monitor.query("SELECT datname FROM pg_database")}
    assert "dbleak_gw1_d4e5f6" not in names
    assert SESSION in names


def test_a_broken_admin_connection_is_opened_again_once_and_keeps_its_session_lock(
    server: PgServer, monitor: PgMonitor
) -> None:
    shared: set[int] = set()
    first = PgMonitor(server.endpoint, "first", shared)
    second = PgMonitor(server.endpoint, "second", shared)  # the lock watch's, say
    first.claim("dbleak_gw2_a0b1c2")
    gone = first.connection_id
    assert shared == {gone, second.connection_id}
    second.end_connection(gone)  # the server ends it: to `first`, a network blip
    _poll(
        lambda: (
            gone not in second.snapshot().rows
            and gone not in {int(r[0]) for r in second.query("SELECT pid FROM pg_stat_activity")}
        )
    )
    assert first.query("SELECT 1") == [(1,)]  # a new connection, no error
    assert first.connection_id != gone
    assert shared == {first.connection_id, second.connection_id}
    # The session lock came along: another connection cannot take it.
    with pytest.raises(DbleakError, match="held by another connection"):
        second.claim("dbleak_gw2_a0b1c2")
    first.close()
    second.close()


def test_a_server_that_refuses_the_new_connection_is_gone(server: PgServer) -> None:
    other = PgMonitor(server.endpoint, "other")
    with other._lock:  # the test plays a broken connection and a server gone for good
        other._conn.close()
    other.endpoint = dataclasses.replace(server.endpoint, port=1, socket_dir=None)  # type: ignore[misc]
    with pytest.raises(ServerGoneError, match="stopped answering"):
        other.query("SELECT 1")


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg", "pg8000"])
def test_each_drivers_url_and_connect_kwargs_reach_the_session_database(
    server: PgServer, monitor: PgMonitor, driver: str
) -> None:
    import asyncio
    import importlib

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from pytest_dbleak.engine.database import Database

    module = pytest.importorskip(driver)
    db = Database(
        SESSION, SESSION, PASSWORD, "127.0.0.1", server.endpoint.port, family="postgresql"
    )
    query = "SELECT current_database(), current_user"
    if driver == "asyncpg":

        async def both() -> tuple[Any, Any]:
            engine = create_async_engine(db.url(driver))
            async with engine.connect() as conn:
                via_url = (await conn.execute(sa.text(query))).one()
            await engine.dispose()
            raw = await module.connect(**db.connect_kwargs(driver))
            try:
                return tuple(via_url), tuple(await raw.fetchrow(query))
            finally:
                await raw.close()

        via_url, direct = asyncio.run(both())
    else:
        engine = sa.create_engine(db.url(driver))
        with engine.connect() as conn:
            via_url = tuple(conn.execute(sa.text(query)).one())
        engine.dispose()
        raw = importlib.import_module(driver).connect(**db.connect_kwargs(driver))
        try:
            cursor = raw.cursor()
            cursor.execute(query)
            direct = tuple(cursor.fetchone())
        finally:
            raw.close()
    assert via_url == direct == (SESSION, SESSION)


def _await_exit(pid: int) -> None:
    """Wait for any process (not only a child) to end: a pidfd becomes readable then."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], 60)  # a bound, so a regression fails
        assert ready, f"process {pid} is still running"
    finally:
        os.close(fd)


def test_a_killed_parent_leaves_no_server_and_no_folder() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pytest_dbleak.families.postgresql.embedded import find_postgres, start_postgres
        server = start_postgres(find_postgres(None), Path({str(CACHE)!r}), 30)
        print(server.pid, server.root, flush=True)
        sys.stdin.read()  # until killed
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        pid_text, root = child.stdout.readline().split()
        server_pid = int(pid_text)
        reaper_pid = int(Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        child.kill()
    # The reaper sees EOF on its stdin, kills the server, waits for it, removes the folder
    # and exits.
    _await_exit(reaper_pid)
    assert not Path(root).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_a_binary_that_does_not_exist_is_one_line() -> None:
    with pytest.raises(DbleakError, match=r"^--dbleak-postgres: /nowhere/postgres is not an"):
        find_postgres("/nowhere/postgres")


def test_a_spawned_postgres_says_it_is_ready_on_the_notify_socket_and_a_cancel_leaves_nothing() -> (
    None
):
    from pytest_dbleak.families.postgresql.embedded import spawn_postgres

    binary = find_postgres(None)
    if binary is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    spawned = spawn_postgres(binary, CACHE)
    server = spawned.wait(30)
    try:
        # Debian's postgres is built with libsystemd: its READY=1 ended the wait (or the
        # first login came before it, on a fast machine: then the probe did).
        with psycopg.connect(
            host="127.0.0.1",
            port=server.endpoint.port,
            user=server.endpoint.user,
            password=server.endpoint.password,
            dbname="postgres",
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            # Its shared memory lives in its folder: a SIGKILL (the reaper's) of a server
            # with POSIX segments would leave them in /dev/shm for good.
            assert conn.execute("SHOW dynamic_shared_memory_type").fetchone() == ("mmap",)
    finally:
        server.stop()
    assert not server.root.exists()

    cancelled = spawn_postgres(binary, CACHE)
    pid = cancelled.pid  # started (its reaper copied the template first)
    cancelled.cancel()
    assert not cancelled.root.exists()
    with pytest.raises(ProcessLookupError):  # the reaper killed and reaped it
        os.kill(pid, 0)
