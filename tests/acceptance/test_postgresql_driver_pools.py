"""PostgreSQL drivers' own pools are pools, as MySQL's are (test_driver_pools.py):
asyncpg's ``create_pool`` and psycopg_pool's ``ConnectionPool`` and
``AsyncConnectionPool``.

Idle connections of a session-scoped pool are the pool's (it grew), not leaks; a
connection acquired and never released is a ``checked_out`` leak at the acquire line; a
pool created in the test and never closed is the test's own (``undisposed_engine``);
the clean twins give back and close. On the process backend's own ``postgres``, alone
and under ``-n 2``.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, failure_of, line_of, only_dbleak_and

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from pytest_dbleak.families.postgresql.embedded import find_postgres

PREAMBLE = """\
import asyncio

import pytest

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends


@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
"""

ASYNCPG_POOL = """
import asyncpg


def kwargs_of(database):
    return database.connect_kwargs("asyncpg")


@pytest.fixture(scope="session")
def pool(loop, dbleak_postgresql_database):
    async def create():  # in the loop: a pool made outside takes asyncio's default one
        kwargs = kwargs_of(dbleak_postgresql_database)
        return await asyncpg.create_pool(min_size=1, max_size=5, **kwargs)

    pool = loop.run_until_complete(create())
    yield pool
    pool.terminate()  # close() would wait for the leaked acquire forever


async def select_one(pool):
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_sleep(0.05)")


def test_clean_the_pool_grows(loop, pool):
    async def three_at_once():
        await asyncio.gather(*(select_one(pool) for _ in range(3)))

    loop.run_until_complete(three_at_once())
    assert pool.get_idle_size() >= 2  # it grew: idle connections of a session's pool


def test_leaky_acquire(loop, pool):
    async def keep():
        KEEP.append(await pool.acquire())  # LEAK-acquire

    loop.run_until_complete(keep())


def test_clean_acquire(loop, pool):
    async def give_back():
        conn = await pool.acquire()
        await pool.release(conn)

    loop.run_until_complete(give_back())


def test_leaky_pool(loop, dbleak_postgresql_database):
    async def create():
        kwargs = kwargs_of(dbleak_postgresql_database)
        KEEP.append(await asyncpg.create_pool(min_size=2, max_size=2, **kwargs))  # LEAK-pool

    loop.run_until_complete(create())


def test_clean_pool(loop, dbleak_postgresql_database):
    async def create_and_close():
        kwargs = kwargs_of(dbleak_postgresql_database)
        pool = await asyncpg.create_pool(min_size=2, max_size=2, **kwargs)
        await select_one(pool)
        await pool.close()

    loop.run_until_complete(create_and_close())
"""

PSYCOPG_POOL = """
import threading

from psycopg_pool import ConnectionPool


def kwargs_of(database):
    return database.connect_kwargs("psycopg")


@pytest.fixture(scope="session")
def pool(dbleak_postgresql_database):
    kwargs = kwargs_of(dbleak_postgresql_database)
    pool = ConnectionPool(kwargs=kwargs, min_size=1, max_size=5, open=True)
    pool.wait()
    yield pool
    pool.close()


def select_one(pool):
    with pool.connection() as conn:
        conn.execute("SELECT pg_sleep(0.05)")


def test_clean_the_pool_grows(pool):
    threads = [threading.Thread(target=select_one, args=(pool,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pool.get_stats()["pool_available"] >= 2  # it grew: idle connections of a session's pool


def test_leaky_acquire(pool):
    KEEP.append(pool.getconn())  # LEAK-acquire


def test_leaky_acquire_in_a_context_never_left(pool):
    context = pool.connection()
    KEEP.append(context)
    KEEP.append(context.__enter__())  # LEAK-context


def test_clean_acquire(pool):
    conn = pool.getconn()
    conn.execute("SELECT 1")
    pool.putconn(conn)


def test_clean_acquire_in_a_context(pool):
    select_one(pool)


def test_leaky_pool(dbleak_postgresql_database):
    kwargs = kwargs_of(dbleak_postgresql_database)
    KEEP.append(ConnectionPool(kwargs=kwargs, min_size=2, max_size=2, open=True))  # LEAK-pool
    KEEP[-1].wait()  # both connected: none still on its way in


def test_clean_pool(dbleak_postgresql_database):
    kwargs = kwargs_of(dbleak_postgresql_database)
    with ConnectionPool(kwargs=kwargs, min_size=2, max_size=2, open=False) as pool:
        pool.wait()
        select_one(pool)
"""

PSYCOPG_ASYNC_POOL = """
from psycopg_pool import AsyncConnectionPool


def kwargs_of(database):
    return database.connect_kwargs("psycopg")


@pytest.fixture(scope="session")
def pool(loop, dbleak_postgresql_database):
    kwargs = kwargs_of(dbleak_postgresql_database)
    pool = AsyncConnectionPool(kwargs=kwargs, min_size=1, max_size=5, open=False)
    loop.run_until_complete(pool.open(wait=True))
    yield pool
    loop.run_until_complete(pool.close())


async def select_one(pool):
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_sleep(0.05)")


def test_clean_the_pool_grows(loop, pool):
    async def three_at_once():
        await asyncio.gather(*(select_one(pool) for _ in range(3)))

    loop.run_until_complete(three_at_once())
    assert pool.get_stats()["pool_available"] >= 2  # it grew: idle connections of a session's pool


def test_leaky_acquire(loop, pool):
    async def keep():
        KEEP.append(await pool.getconn())  # LEAK-acquire

    loop.run_until_complete(keep())


def test_clean_acquire(loop, pool):
    async def give_back():
        conn = await pool.getconn()
        await conn.execute("SELECT 1")
        await pool.putconn(conn)

    loop.run_until_complete(give_back())


def test_leaky_pool(loop, dbleak_postgresql_database):
    async def create():
        kwargs = kwargs_of(dbleak_postgresql_database)
        KEEP.append(AsyncConnectionPool(kwargs=kwargs, min_size=2, open=False))  # LEAK-pool
        await KEEP[-1].open(wait=True)  # both connected: none still on its way in

    loop.run_until_complete(create())


def test_clean_pool(loop, dbleak_postgresql_database):
    async def create_and_close():
        kwargs = kwargs_of(dbleak_postgresql_database)
        async with AsyncConnectionPool(kwargs=kwargs, min_size=2, open=False) as pool:
            await pool.wait()
            await select_one(pool)

    loop.run_until_complete(create_and_close())
"""

# name -> (the module it needs, the inner test module)
CASES = {
    "asyncpg": ("asyncpg", PREAMBLE + ASYNCPG_POOL),
    "psycopg_pool": ("psycopg_pool", PREAMBLE + PSYCOPG_POOL),
    "psycopg_pool_async": ("psycopg_pool", PREAMBLE + PSYCOPG_ASYNC_POOL),
}

# Each leaky test: (the marker of the line it must fail at, its verdict, what it says)
ACQUIRE = (
    "dbleak: 1 connection leaked (1 checked_out) at test_pool.py:{line}",
    "*server connection * of {kind} acquired and never released",
)
POOL = (
    "dbleak: 2 connections leaked (2 undisposed_engine) at test_pool.py:{line}",
    "*{kind} created during the test and never closed, holding 2 idle server connections",
)
LEAKY = {
    "test_leaky_acquire": ("# LEAK-acquire", ACQUIRE),
    "test_leaky_acquire_in_a_context_never_left": ("# LEAK-context", ACQUIRE),
    "test_leaky_pool": ("# LEAK-pool", POOL),
}
KIND = {
    "asyncpg": "asyncpg Pool",
    "psycopg_pool": "psycopg_pool ConnectionPool",
    "psycopg_pool_async": "psycopg_pool AsyncConnectionPool",
}


@pytest.fixture
def postgres() -> None:
    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")


def corpus(case: str) -> str:
    module, source = CASES[case]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the postgresql extra)")
    return source


def leaky_of(source: str) -> list[str]:
    return [name for name in LEAKY if f"\ndef {name}(" in source]


def run(
    pytester: pytest.Pytester,
    source: str,
    *extra: str,
    backend_args: tuple[str, ...] = ("--dbleak-backend=process",),
    plugins: tuple[str, ...] = ONLY_DBLEAK,
) -> pytest.RunResult:
    pytester.makepyfile(test_pool=source)
    result = pytester.runpytest_subprocess(
        "--dbleak", *backend_args, FAST, *plugins, *extra, timeout=120
    )
    result.assert_outcomes(failed=len(leaky_of(source)), passed=source.count("\ndef test_clean_"))
    return result


def assert_each_leak_names_its_line(result: pytest.RunResult, source: str, case: str) -> None:
    for name in leaky_of(source):
        marker, (verdict, what) = LEAKY[name]
        line = line_of(source, marker)
        block = failure_of(result, name)
        # Under xdist the entry's first line names the worker: the verdict is the next.
        first = next(text for text in block.lines[1:] if not text.startswith("[gw"))
        assert first == verdict.format(line=line), block.str()
        block.fnmatch_lines([what.format(kind=KIND[case]), f"    test_pool.py:{line} in *"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_postgresql_drivers_own_pool_is_a_pool_and_its_leaks_fail_at_the_users_line(
    pytester: pytest.Pytester, case: str, pg_backend_args: list[str]
) -> None:
    source = corpus(case)

    result = run(pytester, source, backend_args=tuple(pg_backend_args))

    assert_each_leak_names_its_line(result, source, case)


@pytest.mark.usefixtures("postgres")
@pytest.mark.parametrize("case", sorted(CASES))
def test_under_xdist_the_same_verdicts(pytester: pytest.Pytester, case: str) -> None:
    source = corpus(case)

    result = run(pytester, source, "-n", "2", plugins=only_dbleak_and("xdist"))

    assert_each_leak_names_its_line(result, source, case)


LAZY = """\
from concurrent.futures import ThreadPoolExecutor

import pytest

KEEP = []


@pytest.fixture(scope="session")
def pool(dbleak_postgresql_database):
    from psycopg_pool import ConnectionPool  # imported here, as many conftests do

    pool = ConnectionPool(kwargs=dbleak_postgresql_database.connect_kwargs(), min_size=1,
                          max_size=4, open=True)
    pool.wait(timeout=10)
    yield pool
    pool.close()


def test_nothing_yet():
    pass


def test_clean_the_pool_grows(pool):
    def work(_):
        with pool.connection() as conn:
            conn.execute("SELECT pg_sleep(0.02)")

    with ThreadPoolExecutor(max_workers=4) as ex:
        list(ex.map(work, range(8)))


def test_leaky_acquire(pool):
    KEEP.append(pool.getconn())  # LEAK-lazy
"""


def test_a_driver_first_imported_in_a_session_fixture_is_traced_before_its_pool_is_made(
    pytester: pytest.Pytester,
) -> None:
    """Its pool is known at once: its growth in a later test is not a leak (it was, when
    drivers were looked for only at the next window), an acquire never given back is."""
    if importlib.util.find_spec("psycopg_pool") is None:
        pytest.skip("psycopg_pool is not installed (the postgresql extra)")
    pytester.makepyfile(test_pool=LAZY)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK, "-p", "no:randomly"
    )
    result.assert_outcomes(failed=1, passed=2)
    block = failure_of(result, "test_leaky_acquire")
    line = line_of(LAZY, "# LEAK-lazy")
    assert block.lines[1] == f"dbleak: 1 connection leaked (1 checked_out) at test_pool.py:{line}"
