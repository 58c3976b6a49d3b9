"""SQLAlchemy's asyncio engines on aiomysql and asyncmy: each leak names the user's
``await`` line (not SQLAlchemy's greenlet), under pytest-asyncio and under asyncio.run;
each clean twin passes.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, failure_of, line_of

ASYNC_DRIVERS = ("aiomysql", "asyncmy")
# The inner runs load pytest-asyncio (and nothing else but the plugin).
WITH_ASYNCIO = tuple(
    arg
    for pair in zip(ONLY_DBLEAK[::2], ONLY_DBLEAK[1::2], strict=True)
    if pair != ("-p", "no:asyncio")
    for arg in pair
)

EVERY_KIND = """
import asyncio

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

NAME = "{name}"
DRIVER = __import__(NAME)


@pytest.fixture
def url(dbleak_database):
    return dbleak_database.url(NAME)


async def open_connection(engine):
    return await engine.connect()  # LEAK-helper


@pytest.mark.asyncio
async def test_leaky_async_connection(url):
    engine = create_async_engine(url)
    KEEP.append(await open_connection(engine))  # LEAK-conn


@pytest.mark.asyncio
async def test_clean_async_connection(url):
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    await engine.dispose()


@pytest.mark.asyncio
async def test_leaky_async_session(url):
    engine = create_async_engine(url)
    session = async_sessionmaker(engine)()
    await session.execute(sa.text("SELECT 1"))  # LEAK-session
    KEEP.append(session)


@pytest.mark.asyncio
async def test_clean_async_session(url):
    engine = create_async_engine(url)
    async with AsyncSession(engine) as session:
        await session.execute(sa.text("SELECT 1"))
    await engine.dispose()


@pytest.mark.asyncio
async def test_leaky_async_engine(url):
    engine = create_async_engine(url)  # LEAK-engine
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    KEEP.append(engine)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_engine(dbleak_database):
    # The application's engine: outlives every test, never resets on return.
    engine = create_async_engine(dbleak_database.url(NAME), pool_reset_on_return=None)
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INT) ENGINE=InnoDB"))
    yield engine
    await engine.dispose()


def insert_and_return(sync_conn, end):
    # Runs in SQLAlchemy's greenlet (run_sync). Connection.close() would roll back; a raw
    # pooled connection does not.
    raw = sync_conn.engine.raw_connection()  # LEAK-trx
    cursor = raw.cursor()
    cursor.execute("INSERT INTO t VALUES (1)")
    cursor.close()
    if end:
        raw.commit()
    raw.close()  # back in the pool: without `end`, neither committed nor rolled back


@pytest.mark.asyncio(loop_scope="module")
async def test_leaky_async_transaction(app_engine):
    async with app_engine.connect() as conn:
        await conn.run_sync(insert_and_return, False)


@pytest.mark.asyncio(loop_scope="module")
async def test_clean_async_transaction(app_engine):
    async with app_engine.connect() as conn:
        await conn.run_sync(insert_and_return, True)


async def hold(engine, started):
    conn = await engine.connect()  # LEAK-cancel
    started.set()
    await asyncio.Event().wait()  # cancelled here: nothing gives the connection back
    await conn.close()


async def hold_and_return(engine, started):
    async with engine.connect():
        started.set()
        await asyncio.Event().wait()


async def cancel_holder(url, holder):
    engine = create_async_engine(url)
    started = asyncio.Event()
    task = asyncio.create_task(holder(engine, started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    KEEP.append(task)
    return engine


@pytest.mark.asyncio
async def test_leaky_cancelled_task(url):
    KEEP.append(await cancel_holder(url, hold))


@pytest.mark.asyncio
async def test_clean_cancelled_task(url):
    engine = await cancel_holder(url, hold_and_return)
    await engine.dispose()


async def keep_open(url):
    engine = create_async_engine(url)
    KEEP.append(await engine.connect())  # LEAK-run


async def close_again(url):
    engine = create_async_engine(url)
    conn = await engine.connect()
    await conn.close()
    await engine.dispose()


def test_leaky_under_asyncio_run(url):
    asyncio.run(keep_open(url))


def test_clean_under_asyncio_run(url):
    asyncio.run(close_again(url))


async def raw_connect(kwargs):
    if NAME == "aiomysql":
        return await DRIVER.connect(**kwargs)  # LEAK-raw-aiomysql
    return await DRIVER.connect(**kwargs)  # LEAK-raw-asyncmy


@pytest.mark.asyncio
async def test_leaky_raw_connection(dbleak_database):
    KEEP.append(await raw_connect(dbleak_database.connect_kwargs(NAME)))


@pytest.mark.asyncio
async def test_clean_raw_connection(dbleak_database):
    conn = await raw_connect(dbleak_database.connect_kwargs(NAME))
    await conn.ensure_closed()
"""


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_every_async_leak_names_the_users_await_line_and_its_twin_passes(
    pytester: pytest.Pytester, driver: str
) -> None:
    for module in (driver, "greenlet", "pytest_asyncio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'pytest-dbleak[async]')")
    source = EVERY_KIND.format(name=driver)
    name = f"test_{driver}"
    pytester.makepyfile(**{name: PREAMBLE + source})
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *WITH_ASYNCIO
    )

    result.assert_outcomes(failed=7, passed=6)
    full = PREAMBLE + source
    raw = "# LEAK-raw-aiomysql" if driver == "aiomysql" else "# LEAK-raw-asyncmy"
    for test, kind, markers in (
        ("test_leaky_async_connection", "checked_out", ("# LEAK-conn", "# LEAK-helper")),
        ("test_leaky_async_session", "checked_out", ("# LEAK-session",)),
        ("test_leaky_async_engine", "undisposed_engine", ("# LEAK-engine",)),
        ("test_leaky_async_transaction", "open_transaction", ("# LEAK-trx",)),
        ("test_leaky_cancelled_task", "*", ("# LEAK-cancel",)),
        ("test_leaky_under_asyncio_run", "checked_out", ("# LEAK-run",)),
        ("test_leaky_raw_connection", "server_connection", (raw,)),
    ):
        lines = [line_of(full, marker) for marker in markers]
        block = failure_of(result, test)
        block.fnmatch_lines(
            [
                f"dbleak: 1 connection leaked (1 {kind}) at {name}.py:{lines[-1]}",
                *(f"    {name}.py:{line} in *" for line in lines),
            ]
        )


UNDER_ANYIO = """
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_leaky_under_anyio(dbleak_database):
    engine = create_async_engine(dbleak_database.url("{name}"))
    KEEP.append(await engine.connect())  # LEAK-anyio


@pytest.mark.anyio
async def test_clean_under_anyio(dbleak_database):
    engine = create_async_engine(dbleak_database.url("{name}"))
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    await engine.dispose()
"""


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_an_async_leak_under_anyio_names_the_users_await_line(
    pytester: pytest.Pytester, driver: str
) -> None:
    for module in (driver, "greenlet", "anyio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    source = UNDER_ANYIO.format(name=driver)
    pytester.makepyfile(test_anyio=PREAMBLE + source)
    with_anyio = tuple(
        arg
        for pair in zip(ONLY_DBLEAK[::2], ONLY_DBLEAK[1::2], strict=True)
        if pair != ("-p", "no:anyio")
        for arg in pair
    )
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *with_anyio
    )

    result.assert_outcomes(failed=1, passed=1)
    line = line_of(PREAMBLE + source, "# LEAK-anyio")
    failure_of(result, "test_leaky_under_anyio").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 checked_out) at test_anyio.py:{line}",
            f"    test_anyio.py:{line} in test_leaky_under_anyio",
        ]
    )
