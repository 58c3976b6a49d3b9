"""Robust inside any suite: what a library's own test suite does to SQLAlchemy must not
turn into a false verdict or a crash (SQLAlchemy's own suite is the model: see
bench/sqlalchemy_suite.py).

- A suite that clears SQLAlchemy's event registry mid-session (``Pool.dispatch._clear()``,
  ``Engine.dispatch._clear()``) or undoes the driver wrappers: later verdicts unchanged,
  and the session ends with its summary, not a traceback.
- Connections of a mock DBAPI hold no resource: never a leak; their ``mock_calls`` stay
  the test's own.
- A connection detached from its pool and closed by its owner is not a leak.
- A server row that lags behind a close is settled without waiting.

Each clean case has a leaky twin that still fails.
"""

from __future__ import annotations

import json

import pytest

from tests.acceptance.helpers import (
    FAST,
    ONLY_DBLEAK,
    PREAMBLE,
    all_output,
    failure_of,
    line_of,
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK, "-rA", *args
    )


CLEARED = """
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool


def clean(url):
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_a_clean_engine_before(dbleak_mysql_url):
    clean(dbleak_mysql_url)


@pytest.fixture
def clears_the_registry():
    yield
    Pool.dispatch._clear()  # what SQLAlchemy's own fixtures do in their teardowns
    Engine.dispatch._clear()


def test_that_clears_the_registry_in_its_teardown(dbleak_mysql_url, clears_the_registry):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_that_clears_the_registry_in_its_body(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    Pool.dispatch._clear()
    engine.dispose()  # its close events are lost: the pool's record is unknown


def test_that_undoes_the_driver_wrappers(dbleak_mysql_url):
    connection = pymysql.connections.Connection
    for name in ("connect", "close"):
        setattr(connection, name, getattr(connection, name).__wrapped__)
    conn = pymysql.connect(**connect_args(dbleak_mysql_url))
    conn.close()


def test_that_imports_the_driver_again():
    import importlib

    importlib.reload(pymysql.connections)  # a new Connection class


def test_a_clean_engine_after(dbleak_mysql_url):
    clean(dbleak_mysql_url)


def test_an_engine_disposed_after(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect():
        pass
    engine.dispose()
    with engine.connect():  # the recreated pool is still the same engine's
        pass
    engine.dispose()


def test_a_leaky_engine_after(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    KEEP.append(engine)  # LEAK-engine


def test_a_connection_left_checked_out_after(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    KEEP.append((engine, engine.connect()))  # LEAK-checkout


def test_a_raw_connection_left_open_after(dbleak_mysql_url):
    # The class imported again: its connect is traced too, so the leak names this line.
    conn = pymysql.connections.Connection(**connect_args(dbleak_mysql_url))  # LEAK-raw
    KEEP.append(conn)
"""


def test_listeners_cleared_mid_session_leave_later_verdicts_unchanged_and_no_crash(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_cleared=PREAMBLE + CLEARED)
    result = run(pytester)

    result.assert_outcomes(passed=7, failed=3)
    assert result.ret == 6, all_output(result)  # leaks only: the plugin's exit code
    failure_of(result, "test_a_leaky_engine_after").fnmatch_lines(
        ["*1 undisposed_engine*", "*QueuePool still alive without dispose(), holding 1 server*"]
    )
    failure_of(result, "test_a_connection_left_checked_out_after").fnmatch_lines(
        ["*1 checked_out*"]
    )
    line = line_of(PREAMBLE + CLEARED, "# LEAK-raw")
    failure_of(result, "test_a_raw_connection_left_open_after").fnmatch_lines(
        [f"*1 server_connection*test_cleared.py:{line}*"]
    )
    output = all_output(result)
    assert "No listeners found" not in output
    assert "Traceback" not in output
    result.stdout.fnmatch_lines(["*dbleak: 3 tests leaked connections*"])


MOCKS = """
from unittest import mock


def test_a_mock_dbapi_pool_kept_open():
    dbapi = mock.MagicMock()
    pool = sa.pool.QueuePool(dbapi.connect, pool_size=2)
    KEEP.append((pool, pool.connect(), pool.connect()))  # checked out, never given back


def test_a_mock_dbapi_pool_never_disposed():
    pool = sa.pool.QueuePool(mock.MagicMock, pool_size=3)
    for _ in range(3):
        pool.connect().close()
    KEEP.append(pool)  # holds its mock connections idle


def test_a_mock_connection_whose_calls_are_asserted():
    conn = mock.Mock(spec=["rollback", "close", "cursor", "commit", "thread_id"])
    pool = sa.pool.QueuePool(lambda: conn, reset_on_return=None)  # nothing resets it
    proxy = pool.connect()
    proxy.close()
    pool.dispose()
    assert conn.mock_calls == [mock.call.close()]


def test_a_real_pool_kept_open(dbleak_mysql_url):
    pool = sa.pool.QueuePool(lambda: pymysql.connect(**connect_args(dbleak_mysql_url)))
    KEEP.append((pool, pool.connect()))  # LEAK-real
"""


def test_mock_dbapi_connections_are_no_leak_and_are_never_touched(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_mocks=PREAMBLE + MOCKS)
    result = run(pytester)

    result.assert_outcomes(passed=3, failed=1)
    failure_of(result, "test_a_real_pool_kept_open").fnmatch_lines(["*1 checked_out*"])


DETACHED = """
def test_a_detached_connection_closed_by_its_owner(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()
    conn.detach()
    conn.connection.dbapi_connection.close()
    engine.dispose()
    KEEP.append(conn)


def test_a_detached_connection_left_open(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()
    conn.detach()
    engine.dispose()
    KEEP.append(conn)  # LEAK-detached
"""


def test_a_detached_and_closed_connection_is_no_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_detached=PREAMBLE + DETACHED)
    result = run(pytester)

    result.assert_outcomes(passed=1, failed=1)
    failure_of(result, "test_a_detached_connection_left_open").fnmatch_lines(["*1 checked_out*"])


# A connection of a process started with subprocess (no site: this process never saw
# it open) whose client went away while the server still runs its statement: the row
# stays for a second after the client is gone.
LAGGING = '''
import subprocess
import sys

CHILD = """
import os, sys, pymysql
from pymysql.constants import COMMAND
conn = pymysql.connect(**eval(sys.argv[1]))
conn._execute_command(COMMAND.COM_QUERY, "SELECT SLEEP(1)")
print("sent", flush=True)
if sys.argv[2] == "exit":
    os._exit(0)  # the kernel closes the socket; the server finishes SLEEP(1) first
sys.stdin.read()
"""


def child(url, how):
    args = repr(connect_args(url))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, args, how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "sent"
    return proc


def test_a_client_gone_while_its_row_lags(dbleak_mysql_url):
    child(dbleak_mysql_url, "exit").wait()


def test_a_client_that_keeps_its_connection(dbleak_mysql_url):
    KEEP.append(child(dbleak_mysql_url, "stay"))  # LEAK-child
'''


def test_a_lagging_close_is_settled_without_waiting(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lagging=PREAMBLE + LAGGING)
    result = run(pytester, "--dbleak-settle-timeout=5", "--dbleak-report=r.json")

    result.assert_outcomes(passed=1, failed=1)
    failure_of(result, "test_a_client_that_keeps_its_connection").fnmatch_lines(
        ["*1 server_connection*"]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    waited = {t["nodeid"].split("::")[-1]: t["waited"] for t in report["tests"]}
    assert waited["test_a_client_gone_while_its_row_lags"] == 0
    # The twin's client socket is established: judged at once, too.
    assert waited["test_a_client_that_keeps_its_connection"] == 0


REPLACED = """
from sqlalchemy.pool import Pool


def own_new(cls, *args, **kwargs):
    return object.__new__(cls)


def test_that_puts_its_own_pool_new_in_place():
    Pool.__new__ = staticmethod(own_new)


def test_later(dbleak_mysql_url):
    pass
"""


def test_a_pool_new_replaced_mid_session_stops_the_run_with_one_line_naming_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_replaced=REPLACED)
    result = run(pytester)

    result.stdout.fnmatch_lines(
        [
            "*dbleak: pytest-dbleak cannot watch SQLAlchemy 2.*: Pool.__new__ was replaced by "
            "test_replaced.own_new (checked on *); stopping the run*"
        ]
    )
    assert "test_later PASSED" not in result.stdout.str()
    assert "INTERNALERROR" not in all_output(result)
