"""A corpus of clean tests in the shapes real suites have: none of them may fail under
``pytest --dbleak`` (bench/soak.py runs it again and again, serially and with -n 2)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_size=5, max_overflow=10)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def Session(engine):
    return sessionmaker(engine)


@pytest.fixture(scope="session")
def session_connection(engine):
    # A connection held for the whole session (the "transaction per test" recipe).
    with engine.connect() as conn:
        yield conn


@pytest.fixture
def db_session(session_connection):
    transaction = session_connection.begin()
    session = sa.orm.Session(bind=session_connection)
    yield session
    session.close()
    transaction.rollback()


@pytest.fixture(scope="module")
def module_engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()
