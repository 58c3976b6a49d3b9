"""Drivers' own pools are pools (issue 17): aiomysql's and asyncmy's ``create_pool``,
mysql-connector's ``MySQLConnectionPool`` and MariaDB Connector's ``ConnectionPool``.

Idle connections of a pool a wider fixture created are the pool's growth, not leaks; a
connection acquired and never released is a ``checked_out`` leak at the acquire; a pool
created in the test and never closed is the test's own (``undisposed_engine``).
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.acceptance.helpers import (
    FAST,
    ONLY_DBLEAK,
    PREAMBLE,
    failure_of,
    line_of,
    only_dbleak_and,
)

ASYNC_POOL = """
import asyncio
import importlib

NAME = "{name}"
DRIVER = importlib.import_module(NAME)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pool(loop, dbleak_database):
    pool = loop.run_until_complete(
        DRIVER.create_pool(minsize=1, maxsize=5, **dbleak_database.connect_kwargs(NAME))
    )
    yield pool
    pool.terminate()  # close() would wait for the leaked acquire forever
    loop.run_until_complete(pool.wait_closed())


async def select_one(pool):
    async with pool.acquire() as conn:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT SLEEP(0.05)")


def test_clean_the_pool_grows(loop, pool):
    async def three_at_once():
        await asyncio.gather(*(select_one(pool) for _ in range(3)))

    loop.run_until_complete(three_at_once())
    assert pool.freesize >= 2  # it grew: idle connections of a pool of wider scope


def test_leaky_acquire(loop, pool):
    async def keep():
        KEEP.append(await pool.acquire())  # LEAK-acquire

    loop.run_until_complete(keep())


def test_clean_acquire(loop, pool):
    async def give_back():
        conn = await pool.acquire()
        pool.release(conn)

    loop.run_until_complete(give_back())


def test_leaky_pool(loop, dbleak_database):
    async def create():
        kwargs = dbleak_database.connect_kwargs(NAME)
        KEEP.append(await DRIVER.create_pool(minsize=2, **kwargs))  # LEAK-pool

    loop.run_until_complete(create())


def test_clean_pool(loop, dbleak_database):
    async def create_and_close():
        pool = await DRIVER.create_pool(minsize=2, **dbleak_database.connect_kwargs(NAME))
        await select_one(pool)
        pool.close()
        await pool.wait_closed()

    loop.run_until_complete(create_and_close())
"""

CONNECTOR_POOL = """
from mysql.connector.pooling import MySQLConnectionPool

NAME = "mysqlconnector"


@pytest.fixture(scope="module")
def pool(dbleak_database):
    pool = MySQLConnectionPool(pool_size=3, **dbleak_database.connect_kwargs(NAME))
    yield pool
    pool._remove_connections()


def test_leaky_acquire(pool):
    KEEP.append(pool.get_connection())  # LEAK-acquire


def test_clean_acquire(pool):
    cnx = pool.get_connection()
    cnx.close()


def test_leaky_pool(dbleak_database):
    kwargs = dbleak_database.connect_kwargs(NAME)
    KEEP.append(MySQLConnectionPool(pool_size=2, **kwargs))  # LEAK-pool


def test_clean_pool(dbleak_database):
    pool = MySQLConnectionPool(pool_size=2, **dbleak_database.connect_kwargs(NAME))
    pool.get_connection().close()
    pool._remove_connections()
"""

MARIADB_POOL = """
import itertools

import mariadb

NAME = "mariadbconnector"
NAMES = (f"pool{{n}}" for n in itertools.count())


@pytest.fixture(scope="module")
def pool(dbleak_database):
    pool = mariadb.ConnectionPool(
        pool_name=next(NAMES), pool_size=3, **dbleak_database.connect_kwargs(NAME)
    )
    yield pool
    pool.close()


def test_leaky_acquire(pool):
    KEEP.append(pool.get_connection())  # LEAK-acquire


def test_clean_acquire(pool):
    conn = pool.get_connection()
    conn.close()


def test_leaky_pool(dbleak_database):
    kwargs = dbleak_database.connect_kwargs(NAME)
    KEEP.append(mariadb.ConnectionPool(pool_name=next(NAMES), pool_size=2, **kwargs))  # LEAK-pool


def test_clean_pool(dbleak_database):
    pool = mariadb.ConnectionPool(
        pool_name=next(NAMES), pool_size=2, **dbleak_database.connect_kwargs(NAME)
    )
    pool.get_connection().close()
    pool.close()
"""

CASES = {
    "aiomysql": ("aiomysql", ASYNC_POOL.format(name="aiomysql")),
    "asyncmy": ("asyncmy", ASYNC_POOL.format(name="asyncmy")),
    "mysqlconnector": ("mysql.connector", CONNECTOR_POOL),
    "mariadbconnector": ("mariadb", MARIADB_POOL.format()),
}


@pytest.mark.parametrize("driver", sorted(CASES))
def test_a_drivers_own_pool_is_a_pool_and_its_leaks_fail_at_the_users_line(
    pytester: pytest.Pytester, backend_args: list[str], driver: str
) -> None:
    module, corpus = CASES[driver]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed (the drivers extra)")
    source = PREAMBLE + corpus
    pytester.makepyfile(test_pool=source)
    result = pytester.runpytest_subprocess(
        "--dbleak", *backend_args, FAST, "--dbleak-lock-wait=1", *ONLY_DBLEAK, timeout=120
    )
    clean = source.count("\ndef test_clean_")
    result.assert_outcomes(failed=2, passed=clean)
    acquire, pool = line_of(source, "# LEAK-acquire"), line_of(source, "# LEAK-pool")
    failure_of(result, "test_leaky_acquire").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 checked_out) at test_pool.py:{acquire}",
            "*server connection * acquired and never released",
        ]
    )
    failure_of(result, "test_leaky_pool").fnmatch_lines(
        [
            f"dbleak: 2 connections leaked (2 undisposed_engine) at test_pool.py:{pool}",
            "*created during the test and never closed, holding 2 idle server connections",
        ]
    )


@pytest.mark.parametrize("driver", sorted(CASES))
def test_under_xdist_the_same_verdicts(pytester: pytest.Pytester, driver: str) -> None:
    module, corpus = CASES[driver]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed (the drivers extra)")
    source = PREAMBLE + corpus
    pytester.makepyfile(test_pool=source)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        FAST,
        "--dbleak-lock-wait=1",
        *only_dbleak_and("xdist"),
        "-n",
        "2",
        timeout=120,
    )
    result.assert_outcomes(failed=2, passed=source.count("\ndef test_clean_"))
    for test in ("test_leaky_acquire", "test_leaky_pool"):  # in either order
        result.stdout.fnmatch_lines([f"FAILED test_pool.py::{test} - dbleak: *"])


@pytest.mark.parametrize(
    ("test", "outcome"),
    [
        ("test_clean_the_pool_grows", "passed"),
        ("test_leaky_acquire", "failed"),
        ("test_clean_acquire", "passed"),
        ("test_leaky_pool", "failed"),
        ("test_clean_pool", "passed"),
    ],
)
def test_alone_by_node_id_the_same_verdicts(
    pytester: pytest.Pytester, test: str, outcome: str
) -> None:
    if importlib.util.find_spec("aiomysql") is None:
        pytest.skip("aiomysql is not installed (the drivers extra)")
    pytester.makepyfile(test_pool=PREAMBLE + CASES["aiomysql"][1])
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        FAST,
        "--dbleak-lock-wait=1",
        *ONLY_DBLEAK,
        f"test_pool.py::{test}",
        timeout=120,
    )
    result.assert_outcomes(**{outcome: 1})
