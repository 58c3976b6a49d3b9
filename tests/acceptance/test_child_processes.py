"""Connections of the test's child processes carry a site: the child's own connect line
when it was forked, else the line that started it (spawn). The fork bug, a pooled
connection of the parent used by a forked child, is its own kind with both sites; its
clean twin (``engine.dispose(close=False)`` in the child) passes.
"""

from __future__ import annotations

import sys

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, failure_of, line_of

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="child processes are traced through /proc"
)

CHILDREN = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
WORKER_CONNECTIONS = []
STOP = []  # what ends the children a leaky test keeps alive


@pytest.fixture(scope="module", autouse=True)
def no_child_outlives_the_module():
    # A forked child holds copies of the parent's pipes: ending the children before the
    # session ends keeps pytest's exit prompt.
    yield
    for stop in STOP:
        stop()


def keep_open(kwargs, ready, stop):
    conn = pymysql.connect(**kwargs)  # LEAK-forked
    ready.set()
    stop.wait(60)
    conn.close()


def keep_open_spawned(kwargs, ready, stop):
    conn = pymysql.connect(**kwargs)
    ready.set()
    stop.wait(60)
    conn.close()


def open_and_close(kwargs, ready, stop):
    pymysql.connect(**kwargs).close()
    ready.set()


def start(context, target, url):
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=target, args=(connect_args(url), ready, stop), daemon=True)
    process.start()  # LEAK-spawned
    assert ready.wait(30)
    return process, stop


def keep(process, stop):
    STOP.append(lambda: (stop.set(), process.join(30)))


def test_leaky_forked_child(dbleak_mysql_url):
    keep(*start(FORK, keep_open, dbleak_mysql_url))


def test_clean_forked_child(dbleak_mysql_url):
    process, _ = start(FORK, open_and_close, dbleak_mysql_url)
    process.join(30)


def test_leaky_spawned_child(dbleak_mysql_url):
    keep(*start(SPAWN, keep_open_spawned, dbleak_mysql_url))


def test_clean_spawned_child(dbleak_mysql_url):
    process, _ = start(SPAWN, open_and_close, dbleak_mysql_url)
    process.join(30)


def worker_keeps(kwargs):
    WORKER_CONNECTIONS.append(pymysql.connect(**kwargs))  # LEAK-worker


def worker_closes(kwargs):
    pymysql.connect(**kwargs).close()


def test_leaky_process_pool_worker(dbleak_mysql_url):
    pool = ProcessPoolExecutor(1, mp_context=FORK)
    pool.submit(worker_keeps, connect_args(dbleak_mysql_url)).result(30)
    STOP.append(pool.shutdown)


def test_clean_process_pool_worker(dbleak_mysql_url):
    with ProcessPoolExecutor(1, mp_context=FORK) as pool:
        pool.submit(worker_closes, connect_args(dbleak_mysql_url)).result(30)


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


def test_leaky_pool_shared_with_a_forked_child(dbleak_mysql_url):
    share_with_a_child(dbleak_mysql_url, dispose=False)


def test_clean_pool_disposed_in_the_forked_child(dbleak_mysql_url):
    share_with_a_child(dbleak_mysql_url, dispose=True)
"""


def test_child_processes_connections_and_the_fork_bug_are_pinned_to_the_users_lines(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_children=PREAMBLE + CHILDREN)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )

    result.assert_outcomes(failed=4, passed=4)
    full = PREAMBLE + CHILDREN
    for test, kind, marker in (
        ("test_leaky_forked_child", "server_connection", "# LEAK-forked"),
        ("test_leaky_spawned_child", "server_connection", "# LEAK-spawned"),
        ("test_leaky_process_pool_worker", "server_connection", "# LEAK-worker"),
    ):
        line = line_of(full, marker)
        failure_of(result, test).fnmatch_lines(
            [
                f"dbleak: 1 connection leaked (1 {kind}) at test_children.py:{line}",
                "server connection left open: * no pool of this process owns it (child process *",
                f"    test_children.py:{line} in *",
            ]
        )
    use, opened = line_of(full, "# LEAK-child-use"), line_of(full, "# LEAK-parent-open")
    failure_of(result, "test_leaky_pool_shared_with_a_forked_child").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 fork_shared) at test_children.py:{use}",
            "pooled connection of the parent used in a child process: server connection * opened "
            f"at test_children.py:{opened} by this process, used by child process * (forked during "
            "the test): both talk over one socket; call engine.dispose(close=False) in the child",
            f"    test_children.py:{use} in use_in_child",
        ]
    )
