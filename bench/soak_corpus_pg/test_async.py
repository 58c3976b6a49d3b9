"""Async code under pytest-asyncio: psycopg's AsyncConnection, SQLAlchemy's AsyncEngine
on asyncpg (created per test and disposed, or per module), asyncpg's pool as a session
fixture and psycopg_pool's AsyncConnectionPool; each awaited and closed."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from conftest import Customer, Order

psycopg = pytest.importorskip("psycopg")
asyncpg = pytest.importorskip("asyncpg")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def async_engine(pg, engine):  # `engine` has created the tables
    engine = create_async_engine(pg.url("asyncpg"), pool_size=3, max_overflow=3)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="module")
async def async_session(async_engine):
    """The async flavour of the transactional test: a connection, an outer transaction,
    a session joined with savepoints."""
    async with async_engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(
            bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            await session.close()
            await outer.rollback()


@pytest.mark.asyncio
async def test_psycopg_async_connection(psycopg_conninfo):
    async with await psycopg.AsyncConnection.connect(**psycopg_conninfo) as conn:
        cur = await conn.execute("SELECT 40 + 2")
        assert await cur.fetchone() == (42,)


@pytest.mark.asyncio
async def test_psycopg_async_transaction_error_rolls_back(psycopg_conninfo):
    async with await psycopg.AsyncConnection.connect(**psycopg_conninfo) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with conn.transaction():
                await conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.asyncio
async def test_psycopg_async_server_side_cursor(psycopg_conninfo):
    async with await psycopg.AsyncConnection.connect(**psycopg_conninfo) as conn:
        async with conn.cursor(name="series") as cur:
            await cur.execute("SELECT generate_series(1, 1000)")
            total = 0
            async for (n,) in cur:
                total += n
        assert total == 500500


@pytest.mark.asyncio
async def test_psycopg_async_listen_notify(psycopg_conninfo):
    async with await psycopg.AsyncConnection.connect(
        **psycopg_conninfo, autocommit=True
    ) as listener:
        await listener.execute("LISTEN async_jobs")
        async with await psycopg.AsyncConnection.connect(
            **psycopg_conninfo, autocommit=True
        ) as sender:
            await sender.execute("NOTIFY async_jobs, 'hello'")
        async for note in listener.notifies(timeout=5, stop_after=1):
            assert note.payload == "hello"


@pytest.mark.asyncio
async def test_psycopg_async_gather(psycopg_conninfo):
    async def one(n):
        async with await psycopg.AsyncConnection.connect(**psycopg_conninfo) as conn:
            cur = await conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (n,))
            return (await cur.fetchone())[0]

    assert sorted(await asyncio.gather(*(one(n) for n in range(5)))) == list(range(5))


@pytest.mark.asyncio
async def test_psycopg_async_pool(psycopg_conninfo):
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(
        kwargs=psycopg_conninfo, min_size=1, max_size=4, open=False
    ) as pool:

        async def work(n):
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT %s::int * 3", (n,))
                return (await cur.fetchone())[0]

        assert sum(await asyncio.gather(*(work(n) for n in range(12)))) == 3 * sum(range(12))


@pytest.mark.asyncio
async def test_sqlalchemy_async_engine_per_test(pg):
    engine = create_async_engine(pg.url("asyncpg"))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
        async with engine.begin() as conn:
            await conn.execute(sa.text("SELECT count(*) FROM events"))
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_sqlalchemy_async_session_commit(pg, request):
    engine = create_async_engine(pg.url("asyncpg"))
    Session = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with Session() as session, session.begin():
            session.add(Customer(email=f"{request.node.name}@example.com", name="async"))
        async with Session() as session:
            await session.execute(sa.delete(Customer).where(Customer.name == "async"))
            await session.commit()
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_sqlalchemy_async_engine_error_rolls_back(pg):
    engine = create_async_engine(pg.url("asyncpg"))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            async with engine.begin() as conn:
                await conn.execute(sa.text("SELECT * FROM missing_table"))
    finally:
        await engine.dispose()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_async_engine_gather(async_engine):
    async def one(n):
        async with async_engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT CAST(:n AS int)"), {"n": n})).scalar()

    assert sorted(await asyncio.gather(*(one(n) for n in range(6)))) == list(range(6))


@pytest.mark.asyncio(loop_scope="module")
async def test_async_transactional_session(async_session):
    c = Customer(email="async-tx@example.com", name="tx", orders=[Order(total_cents=5)])
    async_session.add(c)
    await async_session.commit()
    assert (
        await async_session.execute(
            sa.select(sa.func.count()).select_from(Order).where(Order.customer_id == c.id)
        )
    ).scalar() == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_async_transactional_session_integrity_error(async_session):
    async_session.add_all(
        [Customer(email="same@example.com", name="a"), Customer(email="same@example.com", name="b")]
    )
    with pytest.raises(sa.exc.IntegrityError):
        await async_session.commit()
    await async_session.rollback()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("n", range(12))
async def test_async_parametrized(async_engine, n):
    async with async_engine.connect() as conn:
        assert (
            await conn.execute(sa.text("SELECT CAST(:n AS int) * CAST(:n AS int)"), {"n": n})
        ).scalar() == n * n


@pytest.mark.asyncio(loop_scope="session")
async def test_asyncpg_pool_acquire(asyncpg_pool):
    async with asyncpg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_asyncpg_pool_grows(asyncpg_pool):
    async def one(n):
        return await asyncpg_pool.fetchval("SELECT $1::int FROM pg_sleep(0.02)", n)

    assert sorted(await asyncio.gather(*(one(n) for n in range(5)))) == list(range(5))


@pytest.mark.asyncio(loop_scope="session")
async def test_asyncpg_pool_transaction_error(asyncpg_pool):
    async with asyncpg_pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS u (x int PRIMARY KEY)")
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO u VALUES (1), (1)")
        assert not conn.is_in_transaction()


@pytest.mark.asyncio(loop_scope="session")
async def test_asyncpg_pool_cursor_and_copy(asyncpg_pool):
    async with asyncpg_pool.acquire() as conn, conn.transaction():
        total = 0
        async for record in conn.cursor("SELECT generate_series(1, 300) AS n", prefetch=50):
            total += record["n"]
        assert total == 45150
        await conn.execute("CREATE TEMP TABLE copied (n int, s text) ON COMMIT DROP")
        await conn.copy_records_to_table("copied", records=[(i, str(i)) for i in range(200)])
        assert await conn.fetchval("SELECT count(*) FROM copied") == 200


@pytest.mark.asyncio(loop_scope="session")
async def test_asyncpg_pool_advisory_lock(asyncpg_pool):
    async with asyncpg_pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(31337)")
        try:
            assert await asyncpg_pool.fetchval("SELECT pg_try_advisory_lock(31337)") is False
        finally:
            assert await conn.fetchval("SELECT pg_advisory_unlock(31337)") is True


@pytest.mark.asyncio
async def test_asyncpg_raw_connection(pg):
    conn = await asyncpg.connect(**pg.connect_kwargs("asyncpg"))
    try:
        stmt = await conn.prepare("SELECT $1::text || '!'")
        assert await stmt.fetchval("hi") == "hi!"
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_listener(pg):
    got = asyncio.get_running_loop().create_future()
    listener = await asyncpg.connect(**pg.connect_kwargs("asyncpg"))
    try:
        await listener.add_listener("pings", lambda *args: got.set_result(args[-1]))
        sender = await asyncpg.connect(**pg.connect_kwargs("asyncpg"))
        try:
            await sender.execute("NOTIFY pings, 'pong'")
        finally:
            await sender.close()
        assert await asyncio.wait_for(got, 5) == "pong"
        await listener.remove_listener("pings", lambda *args: None)
    finally:
        await listener.close()


@pytest.mark.parametrize("n", range(8))
def test_asyncio_run_without_the_plugin(pg, n):
    async def main():
        conn = await asyncpg.connect(**pg.connect_kwargs("asyncpg"))
        try:
            return await conn.fetchval("SELECT $1::int + 1", n)
        finally:
            await conn.close()

    assert asyncio.run(main()) == n + 1
