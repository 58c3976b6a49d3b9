"""PostgreSQL's remaining leak kinds: a connection given back only by the garbage
collector, a forked child's own connection (named by its client port), and the fork bug
(a pooled connection of the parent used in a forked child). Each leaky test fails at the
user's line; each clean twin passes - in the full run and under ``-n 2``.
"""

from __future__ import annotations

import sys

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, failure_of, line_of, only_dbleak_and

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="child processes are traced through /proc"
)
pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

MODULE = """\
import gc
import multiprocessing

import psycopg
import pytest
import sqlalchemy as sa

FORK = multiprocessing.get_context("fork")
STOP = []  # what ends the children a leaky test keeps alive


@pytest.fixture(scope="module", autouse=True)
def no_child_outlives_the_module():
    yield
    for stop in STOP:
        stop()


def test_leaky_connection_given_back_by_the_garbage_collector(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    conn = engine.connect()  # LEAK-gc-return
    conn.execute(sa.text("SELECT 1"))
    del conn
    gc.collect()
    engine.dispose()


def test_clean_connection_closed(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    conn = engine.connect()
    conn.execute(sa.text("SELECT 1"))
    conn.close()
    del conn
    gc.collect()
    engine.dispose()


def keep_open(kwargs, ready, stop):
    conn = psycopg.connect(**kwargs)  # LEAK-forked
    ready.set()
    stop.wait(60)
    conn.close()


def open_and_close(kwargs, ready, stop):
    psycopg.connect(**kwargs).close()
    ready.set()


def start(target, database):
    ready, stop = FORK.Event(), FORK.Event()
    process = FORK.Process(target=target, args=(database.connect_kwargs(), ready, stop),
                           daemon=True)
    process.start()
    assert ready.wait(30)
    return process, stop


def test_leaky_forked_child(dbleak_postgresql_database):
    process, stop = start(keep_open, dbleak_postgresql_database)
    STOP.append(lambda: (stop.set(), process.join(30)))


def test_clean_forked_child(dbleak_postgresql_database):
    process, _ = start(open_and_close, dbleak_postgresql_database)
    process.join(30)


def use_in_child(engine, dispose):
    if dispose:
        engine.dispose(close=False)  # the child's own pool; the parent's connections stay
    with engine.connect() as conn:  # LEAK-child-use
        conn.execute(sa.text("SELECT 1"))


def share_with_a_child(url, dispose):
    engine = sa.create_engine(url)
    with engine.connect() as conn:  # LEAK-parent-open
        conn.execute(sa.text("SELECT 1"))
    child = FORK.Process(target=use_in_child, args=(engine, dispose))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    engine.dispose()


def test_leaky_pool_shared_with_a_forked_child(dbleak_postgresql_url):
    share_with_a_child(dbleak_postgresql_url, dispose=False)


def test_clean_pool_disposed_in_the_forked_child(dbleak_postgresql_url):
    share_with_a_child(dbleak_postgresql_url, dispose=True)
"""


def _check(result: pytest.RunResult) -> None:
    result.assert_outcomes(failed=3, passed=3)
    gc_line = line_of(MODULE, "# LEAK-gc-return")
    failure_of(result, "test_leaky_connection_given_back_by_the_garbage_collector").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 gc_return) at test_pg.py:{gc_line}",
            "connection returned only by the garbage collector, never by close(): *",
        ]
    )
    forked = line_of(MODULE, "# LEAK-forked")
    failure_of(result, "test_leaky_forked_child").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 server_connection) at test_pg.py:{forked}",
            "server connection left open: * no pool of this process owns it (child process *",
        ]
    )
    use, opened = line_of(MODULE, "# LEAK-child-use"), line_of(MODULE, "# LEAK-parent-open")
    failure_of(result, "test_leaky_pool_shared_with_a_forked_child").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 fork_shared) at test_pg.py:{use}",
            "pooled connection of the parent used in a child process: server connection * "
            f"opened at test_pg.py:{opened} by this process, *",
        ]
    )


def test_gc_return_forked_children_and_the_fork_bug_on_postgresql_are_pinned_to_the_users_lines(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    pytester.makepyfile(test_pg=MODULE)
    run = pytester.runpytest_subprocess
    _check(run("--dbleak", *pg_backend_args, FAST, *ONLY_DBLEAK))
    _check(run("--dbleak", *pg_backend_args, FAST, *only_dbleak_and("xdist"), "-n", "2"))
