"""A PostgreSQL corpus of clean tests, written the way application suites write them:
none of them may fail under ``pytest --dbleak`` (``bench/soak.py --family postgresql``
runs it again and again, serially and with -n 2)."""

from __future__ import annotations

import datetime as dt

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(120), unique=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", cascade="all, delete-orphan"
    )


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customers.id"))
    total_cents: Mapped[int] = mapped_column(sa.CheckConstraint("total_cents >= 0"))
    placed_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    customer: Mapped[Customer] = relationship(back_populates="orders")


@pytest.fixture(scope="session")
def database_url(dbleak_postgresql_url):
    return dbleak_postgresql_url


@pytest.fixture(scope="session")
def engine(database_url):
    engine = sa.create_engine(database_url, pool_size=5, max_overflow=10, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS events ("
                " id bigserial PRIMARY KEY, kind text NOT NULL,"
                " payload jsonb NOT NULL DEFAULT '{}')"
            )
        )
    yield engine
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def schema(engine):
    """Every test may assume the schema exists (the engine fixture created it)."""
    return Base.metadata


@pytest.fixture(scope="session")
def SessionLocal(engine):
    return sessionmaker(bind=engine, expire_on_commit=False)


@pytest.fixture
def connection(engine):
    """The "transactional test" recipe (SQLAlchemy docs, "Joining a Session into an
    External Transaction"): everything a test does, its commits included, is rolled back."""
    conn = engine.connect()
    outer = conn.begin()
    try:
        yield conn
    finally:
        outer.rollback()
        conn.close()


@pytest.fixture
def db_session(connection):
    session = sa.orm.Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def pg(dbleak_postgresql_database):
    return dbleak_postgresql_database


@pytest.fixture(scope="session")
def psycopg_conninfo(pg):
    return pg.connect_kwargs("psycopg")


@pytest.fixture(scope="session")
def psycopg_pool(psycopg_conninfo):
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(kwargs=psycopg_conninfo, min_size=1, max_size=6, open=True, name="app")
    pool.wait(timeout=10)
    yield pool
    pool.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def asyncpg_pool(pg):
    import asyncpg

    pool = await asyncpg.create_pool(min_size=1, max_size=5, **pg.connect_kwargs("asyncpg"))
    yield pool
    await pool.close()
