"""Every PostgreSQL driver under ``pytest --dbleak``: a raw connection left open names the
user's connect line (the driver's connect is traced), its clean twin passes; the same
for a connection checked out of a SQLAlchemy engine on that driver. asyncpg's connect
is a coroutine: its leak names the user's ``await`` line. Alone and under ``-n 2``.

The session database comes from ``dbleak_postgresql_database`` in each driver's own
spelling (URL and connect keywords); the server is the process backend's own
``postgres``, never the machine's.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, failure_of, line_of, only_dbleak_and

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

PREAMBLE = """\
import asyncio

import pytest
import sqlalchemy as sa

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends
"""

# A sync driver: its raw connect, and a connection checked out of an engine on it.
SYNC = """

import {module}


def test_leaky_raw_{name}(dbleak_postgresql_database):
    kwargs = dbleak_postgresql_database.connect_kwargs("{name}")
    KEEP.append({module}.connect(**kwargs))  # LEAK[raw-{name}]


def test_clean_raw_{name}(dbleak_postgresql_database):
    {module}.connect(**dbleak_postgresql_database.connect_kwargs("{name}")).close()


def test_leaky_checkout_{name}(dbleak_postgresql_database):
    engine = sa.create_engine(dbleak_postgresql_database.url("{name}"))
    KEEP.append(engine.connect())  # LEAK[checkout-{name}]


def test_clean_checkout_{name}(dbleak_postgresql_database):
    engine = sa.create_engine(dbleak_postgresql_database.url("{name}"))
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()
"""

# psycopg2's connect bound by name before the plugin traced the driver (at collection).
PSYCOPG2_BOUND_EARLY = """

from psycopg2 import connect as psycopg2_connect


def test_leaky_raw_psycopg2_bound_early(dbleak_postgresql_database):
    kwargs = dbleak_postgresql_database.connect_kwargs("psycopg2")
    KEEP.append(psycopg2_connect(**kwargs))  # LEAK-bound-psycopg2


def test_clean_raw_psycopg2_bound_early(dbleak_postgresql_database):
    psycopg2_connect(**dbleak_postgresql_database.connect_kwargs("psycopg2")).close()
"""

# asyncpg under asyncio.run in sync tests: the site is the user's await line.
ASYNCPG = """

import asyncpg


async def open_raw(kwargs):
    return await asyncpg.connect(**kwargs)  # LEAK-raw-asyncpg


async def open_and_close_raw(kwargs):
    conn = await asyncpg.connect(**kwargs)
    await conn.close()


def test_leaky_raw_asyncpg(dbleak_postgresql_database):
    KEEP.append(asyncio.run(open_raw(dbleak_postgresql_database.connect_kwargs("asyncpg"))))


def test_clean_raw_asyncpg(dbleak_postgresql_database):
    asyncio.run(open_and_close_raw(dbleak_postgresql_database.connect_kwargs("asyncpg")))
"""

ASYNCPG_ENGINE = """

from sqlalchemy.ext.asyncio import create_async_engine


async def check_out(url):
    engine = create_async_engine(url)
    KEEP.append(await engine.connect())  # LEAK-checkout-asyncpg


async def check_out_and_return(url):
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    await engine.dispose()


def test_leaky_checkout_asyncpg(dbleak_postgresql_database):
    asyncio.run(check_out(dbleak_postgresql_database.url("asyncpg")))


def test_clean_checkout_asyncpg(dbleak_postgresql_database):
    asyncio.run(check_out_and_return(dbleak_postgresql_database.url("asyncpg")))
"""

# psycopg 3's AsyncConnection: built inside its connect coroutine; the site is the await.
PSYCOPG_ASYNC = """

import psycopg


async def open_async(kwargs):
    conn = await psycopg.AsyncConnection.connect(**kwargs)  # LEAK-psycopg-async
    await conn.execute("SELECT 1")
    return conn


async def open_and_close_async(kwargs):
    conn = await psycopg.AsyncConnection.connect(**kwargs)
    await conn.execute("SELECT 1")
    await conn.close()


def test_leaky_psycopg_async_connection(dbleak_postgresql_database):
    KEEP.append(asyncio.run(open_async(dbleak_postgresql_database.connect_kwargs())))


def test_clean_psycopg_async_connection(dbleak_postgresql_database):
    asyncio.run(open_and_close_async(dbleak_postgresql_database.connect_kwargs()))
"""

# driver name -> the module whose connect() opens a raw connection
SYNC_DRIVERS = {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000.dbapi"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None


def suite() -> tuple[str, dict[str, tuple[str, str]]]:
    """The inner test module for the drivers installed here, and its leaky tests:
    name -> (leak kind, marker of the line the leak must name)."""
    source, leaky = PREAMBLE, {}
    for name, module in SYNC_DRIVERS.items():
        if not _installed(module):
            continue
        source += SYNC.format(name=name, module=module)
        leaky[f"test_leaky_raw_{name}"] = ("server_connection", f"# LEAK[raw-{name}]")
        leaky[f"test_leaky_checkout_{name}"] = ("checked_out", f"# LEAK[checkout-{name}]")
    if _installed("psycopg"):
        source += PSYCOPG_ASYNC
        leaky["test_leaky_psycopg_async_connection"] = (
            "server_connection",
            "# LEAK-psycopg-async",
        )
    if _installed("psycopg2"):
        source += PSYCOPG2_BOUND_EARLY
        leaky["test_leaky_raw_psycopg2_bound_early"] = (
            "server_connection",
            "# LEAK-bound-psycopg2",
        )
    if _installed("asyncpg"):
        source += ASYNCPG
        leaky["test_leaky_raw_asyncpg"] = ("server_connection", "# LEAK-raw-asyncpg")
        if _installed("greenlet"):
            source += ASYNCPG_ENGINE
            leaky["test_leaky_checkout_asyncpg"] = ("checked_out", "# LEAK-checkout-asyncpg")
    return source, leaky


def run(
    pytester: pytest.Pytester,
    backend_args: list[str],
    *extra: str,
    plugins: tuple[str, ...] = ONLY_DBLEAK,
) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--dbleak", *backend_args, FAST, *plugins, *extra)


def assert_each_leak_names_its_line(
    result: pytest.RunResult, source: str, leaky: dict[str, tuple[str, str]]
) -> None:
    result.assert_outcomes(failed=len(leaky), passed=len(leaky))
    for name, (kind, marker) in leaky.items():
        line = line_of(source, marker)
        block = failure_of(result, name)
        # Under xdist the entry's first line names the worker: the verdict is the next.
        verdict = next(text for text in block.lines[1:] if not text.startswith("[gw"))
        expected = f"dbleak: 1 connection leaked (1 {kind}) at test_pg_drivers.py:{line}"
        assert verdict == expected, block.str()
        block.fnmatch_lines([f"    test_pg_drivers.py:{line} in *"])


def test_every_postgresql_driver_names_the_users_connect_line_and_its_clean_twin_passes(
    pytester: pytest.Pytester, pg_every_backend_args: list[str]
) -> None:
    source, leaky = suite()
    pytester.makepyfile(test_pg_drivers=source)

    result = run(pytester, pg_every_backend_args)

    assert_each_leak_names_its_line(result, source, leaky)


def test_every_postgresql_driver_gives_the_same_verdicts_under_xdist(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    source, leaky = suite()
    pytester.makepyfile(test_pg_drivers=source)

    result = run(pytester, pg_backend_args, "-n", "2", plugins=only_dbleak_and("xdist"))

    assert_each_leak_names_its_line(result, source, leaky)


def test_each_postgresql_drivers_leak_alone_gives_the_full_runs_verdict(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    source, leaky = suite()
    pytester.makepyfile(test_pg_drivers=source)
    for name in leaky:
        result = run(pytester, pg_backend_args, f"test_pg_drivers.py::{name}")
        result.assert_outcomes(failed=1)
        assert_each_leak_names_its_line_alone(result, source, name, leaky[name])
        twin = name.replace("test_leaky_", "test_clean_")
        run(pytester, pg_backend_args, f"test_pg_drivers.py::{twin}").assert_outcomes(passed=1)


def assert_each_leak_names_its_line_alone(
    result: pytest.RunResult, source: str, name: str, expected: tuple[str, str]
) -> None:
    kind, marker = expected
    line = line_of(source, marker)
    verdict = failure_of(result, name).lines[1]
    assert verdict == f"dbleak: 1 connection leaked (1 {kind}) at test_pg_drivers.py:{line}"
