"""Where the server comes from, the fixtures with and without ``--dbleak``, and
``-p no:dbleak``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pymysql
import pytest

from pytest_dbleak.families.mysql.family import parse_mysql_url
from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE

FIXTURES = """
from pytest_dbleak import PoolStatus


def test_the_url_is_a_fresh_database_of_the_sessions_own_user(dbleak_mysql_url):
    url = sa.engine.make_url(dbleak_mysql_url)
    assert url.drivername == "mysql+pymysql" and url.query["ssl_disabled"] == "true"
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SHOW TABLES")).all() == []
        assert conn.execute(sa.text("SELECT CURRENT_USER()")).scalar().startswith("dbleak_")
        conn.execute(sa.text("CREATE TABLE items (id INT PRIMARY KEY) ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO items VALUES (1), (2)"))
        assert conn.execute(sa.text("SELECT COUNT(*) FROM items")).scalar() == 2
    engine.dispose()


def test_the_server_fixture_describes_the_server_and_hides_the_password(dbleak_server):
    assert dbleak_server.backend == "process"
    assert dbleak_server.host == "127.0.0.1" and dbleak_server.port > 0
    assert dbleak_server.is_mariadb and "MariaDB" in dbleak_server.version
    password = sa.engine.make_url(dbleak_server.admin_url).password
    assert password and password not in repr(dbleak_server)
    assert password not in str(dbleak_server)


def test_assert_no_leaks_raises_on_a_leak_inside_the_block(dbleak, dbleak_mysql_url):
    with pytest.raises(pytest.fail.Exception) as failure:
        with dbleak.assert_no_leaks(settle=0.1):
            KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    assert "dbleak: 1 connection leaked (1 server_connection)" in str(failure.value)


def test_assert_no_leaks_raises_on_a_checked_out_connection(dbleak, dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with pytest.raises(pytest.fail.Exception) as failure:
        with dbleak.assert_no_leaks(settle=0.1):
            KEEP.append(engine.connect())
    assert "(1 checked_out)" in str(failure.value)


def test_assert_no_leaks_passes_when_the_block_is_clean(dbleak, dbleak_mysql_url):
    with dbleak.assert_no_leaks():
        engine = sa.create_engine(dbleak_mysql_url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        pymysql.connect(**connect_args(dbleak_mysql_url)).close()


def test_pool_status_counts_checked_out_and_idle_connections(dbleak, dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    held = engine.connect()
    engine.connect().close()
    engine.connect().close()
    assert dbleak.pool_status(engine) == PoolStatus("QueuePool", checked_out=1, idle=1)
    assert dbleak.pool_status(engine.pool).open == 2
    held.close()
    assert dbleak.pool_status(engine) == PoolStatus("QueuePool", checked_out=0, idle=2)
    engine.dispose()
    assert dbleak.pool_status(engine).open == 0

    null = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    with null.connect():
        assert dbleak.pool_status(null) == PoolStatus("NullPool", checked_out=1, idle=0)
    assert dbleak.pool_status(null).open == 0


def test_snapshot_shows_the_sessions_server_connections(dbleak, dbleak_mysql_url):
    before = dbleak.snapshot()
    conn = pymysql.connect(**connect_args(dbleak_mysql_url))
    after = dbleak.snapshot()
    ids = {row.id for row in after.server_connections}
    assert conn.thread_id() in ids
    assert len(after.server_connections) == len(before.server_connections) + 1
    assert after.threads_connected == before.threads_connected + 1
    conn.close()
"""


def test_the_fixtures_work_without_the_leak_check(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures=PREAMBLE + FIXTURES)
    result = pytester.runpytest_subprocess("--dbleak-backend=process", *ONLY_DBLEAK)
    result.assert_outcomes(passed=7)
    result.stdout.no_fnmatch_line("*dbleak: * leaked*")  # no check around the tests


DESCRIBE = """
import json
import pathlib


def test_describe(dbleak_server, dbleak_mysql_url):
    url = sa.engine.make_url(dbleak_mysql_url)
    pathlib.Path("server.json").write_text(json.dumps({
        "backend": dbleak_server.backend, "host": dbleak_server.host,
        "port": dbleak_server.port, "socket": dbleak_server.socket,
        "database": url.database, "user": url.username,
    }))
    if dbleak_server.backend == "process":
        assert pathlib.Path(dbleak_server.socket).exists()


def test_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""


def test_the_url_backend_uses_the_given_server_and_leaves_nothing_behind_on_it(
    pytester: pytest.Pytester, local_mysql_url: str
) -> None:
    pytester.makepyfile(test_describe=PREAMBLE + DESCRIBE)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={local_mysql_url}",
        FAST,
        *ONLY_DBLEAK,
    )
    result.assert_outcomes(passed=1, failed=1)
    seen = json.loads((pytester.path / "server.json").read_text())
    admin = parse_mysql_url(local_mysql_url)
    assert (seen["backend"], seen["port"]) == ("url", admin.port)
    assert seen["user"] != admin.user
    assert seen["database"].startswith("dbleak_")

    # The session's database, its user and the connection the leaky test left are gone.
    conn = admin.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE %s", (seen["database"],))
            assert cursor.fetchall() == ()
            cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s", (seen["user"],))
            assert cursor.fetchone() == (0,)
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE user = %s",
                (seen["user"],),
            )
            assert cursor.fetchone() == (0,)
    finally:
        conn.close()


def test_the_process_backend_runs_a_private_server_that_is_gone_after_the_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_describe=PREAMBLE + DESCRIBE)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )
    result.assert_outcomes(passed=1, failed=1)
    seen = json.loads((pytester.path / "server.json").read_text())
    assert (seen["backend"], seen["host"]) == ("process", "127.0.0.1")
    assert seen["port"] != 3306
    assert seen["socket"]

    assert not Path(seen["socket"]).exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", seen["port"]), 2):
        pass
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=seen["port"], user="root", connect_timeout=2)


def test_p_no_dbleak_turns_the_plugin_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_wants_the_url(dbleak_mysql_url):\n    pass\n")

    result = pytester.runpytest_subprocess("-p", "no:dbleak", *ONLY_DBLEAK)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'dbleak_mysql_url' not found*"])

    result = pytester.runpytest_subprocess("-p", "no:dbleak", "--dbleak", *ONLY_DBLEAK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --dbleak*"])
