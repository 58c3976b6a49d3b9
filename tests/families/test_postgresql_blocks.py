"""The PostgreSQL family's building blocks against a real ``postgres`` they start: the
process backend (template, reaper, login), the admin monitor's snapshot of client
backends, transactions, lock waits, and provisioning under the session lock.

In process, with a real server and real psycopg connections; the pytester acceptance
tests of the family come with its checks.
"""

from __future__ import annotations

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

from pytest_dbleak.engine.errors import DbleakError  # noqa: E402
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
    monitor.create_database(SESSION, PASSWORD)
    yield monitor
    monitor.drop_database(SESSION)
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
    assert (row.user, row.db, row.command) == (SESSION, SESSION, "idle")
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
        began = monitor.idle_in_transaction({pid})
        assert began.keys() == {pid}
        assert began[pid] is not None
        assert monitor.snapshot().rows[pid].command == "idle in transaction"
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert monitor.idle_in_transaction({pid}) == {pid: None}
        assert monitor.snapshot().rows[pid].command == "idle in transaction (aborted)"


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
    assert monitor.cancel(wait.pid)
    thread.join()
    assert isinstance(failed[0], psycopg.errors.QueryCanceled)
    assert monitor.terminate(holder.info.backend_pid)
    waiter.close()
    holder.close()


def test_the_sweep_drops_what_a_killed_session_left_and_never_a_live_one(
    server: PgServer, monitor: PgMonitor
) -> None:
    other = PgMonitor(server.endpoint, "other")
    other.claim("dbleak_gw1_d4e5f6")
    other.create_database("dbleak_gw1_d4e5f6", "pw")
    assert "dbleak_gw1_d4e5f6" not in monitor.sweep_orphans(keep=SESSION)  # alive
    gone = other.connection_id
    other.close()  # the session ends without dropping anything
    # Its lock is free once its backend has exited, a few milliseconds after the close.
    _poll(lambda: gone not in monitor.snapshot().rows)
    assert monitor.sweep_orphans(keep=SESSION) == ["dbleak_gw1_d4e5f6"]
    names = {r[0] for r in monitor.query("SELECT datname FROM pg_database")}
    assert "dbleak_gw1_d4e5f6" not in names
    assert SESSION in names


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
