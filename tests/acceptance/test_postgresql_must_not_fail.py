"""Clean PostgreSQL suites pass under ``pytest --dbleak``: in the full run, each test
alone, and under ``-n 2``.

What PostgreSQL adds to MySQL's must-not-fail cases: a closed backend lingers in
``pg_stat_activity`` for a few milliseconds, parallel workers and autovacuum are server
processes of their own, an aborted transaction is rolled back by the pool, a LISTEN
connection lives as long as its fixture, and psycopg's async close is a coroutine.
"""

from __future__ import annotations

import json

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, only_dbleak_and

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

CLEAN = """
import asyncio
import threading

import psycopg
import pytest
import sqlalchemy as sa


@pytest.fixture(scope="session")
def engine(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url, pool_size=5)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE numbers AS SELECT generate_series(1, 20000) AS n"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def listener(dbleak_postgresql_database):
    conn = psycopg.connect(**dbleak_postgresql_database.connect_kwargs(), autocommit=True)
    conn.execute("LISTEN jobs")
    yield conn
    conn.close()


def test_the_session_pool_grows_with_threads(engine):
    def work():
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_sleep(0.05)"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_the_grown_pool_is_used_again(engine):
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM numbers")).scalar() == 20000


def test_connections_opened_and_closed_in_quick_succession(dbleak_postgresql_database):
    for _ in range(20):
        psycopg.connect(**dbleak_postgresql_database.connect_kwargs()).close()


def test_a_query_run_by_parallel_workers(engine):
    with engine.connect() as conn:
        for setting in ("parallel_setup_cost", "parallel_tuple_cost",
                        "min_parallel_table_scan_size"):
            conn.execute(sa.text(f"SET {setting} = 0"))
        conn.execute(sa.text("SET max_parallel_workers_per_gather = 2"))
        assert conn.execute(sa.text("SELECT sum(n) FROM numbers")).scalar() == 200010000


def test_a_failed_transaction_the_pool_rolls_back(engine):
    with pytest.raises(sa.exc.DataError):
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1 / 0 :: int"))
            conn.execute(sa.text("SELECT 'x' :: int"))


def test_a_committed_write(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE numbers SET n = n WHERE n = 1"))


def test_a_listen_connection_of_a_session_fixture(listener):
    listener.execute("NOTIFY jobs, 'one'")
    assert next(listener.notifies(timeout=5)).payload == "one"


def test_an_async_connection_closed_with_await(dbleak_postgresql_database):
    async def main():
        conn = await psycopg.AsyncConnection.connect(
            **dbleak_postgresql_database.connect_kwargs())
        await conn.execute("SELECT 1")
        await conn.close()

    asyncio.run(main())
"""
NAMES = [line[4:].split("(")[0] for line in CLEAN.splitlines() if line.startswith("def test_")]


@pytest.fixture
def clean_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_clean=CLEAN)
    return pytester


def _clean(result: pytest.RunResult, report: str, pytester: pytest.Pytester, n: int) -> None:
    result.assert_outcomes(passed=n)
    tests = json.loads((pytester.path / report).read_text())["tests"]
    assert [t["nodeid"] for t in tests if t["leaks"]] == []


def test_a_clean_postgresql_suite_passes_in_the_full_run_and_under_xdist(
    clean_suite: pytest.Pytester, pg_every_backend_args: list[str]
) -> None:
    pg_backend_args = pg_every_backend_args
    run = clean_suite.runpytest_subprocess
    full = run("--dbleak", *pg_backend_args, FAST, *ONLY_DBLEAK, "--dbleak-report=full.json")
    _clean(full, "full.json", clean_suite, len(NAMES))
    xdist = run(
        "--dbleak",
        *pg_backend_args,
        FAST,
        *only_dbleak_and("xdist"),
        "-n",
        "2",
        "--dbleak-report=xdist.json",
    )
    _clean(xdist, "xdist.json", clean_suite, len(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_each_clean_postgresql_test_passes_alone(clean_suite: pytest.Pytester, name: str) -> None:
    from pytest_dbleak.families.postgresql.embedded import find_postgres

    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    result = clean_suite.runpytest_subprocess(
        "--dbleak", FAST, *ONLY_DBLEAK, f"test_clean.py::{name}", "--dbleak-report=alone.json"
    )
    _clean(result, "alone.json", clean_suite, 1)
