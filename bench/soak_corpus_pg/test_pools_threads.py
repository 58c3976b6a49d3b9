"""Connection pools growing under a ThreadPoolExecutor: the session's SQLAlchemy engine
(QueuePool), psycopg_pool's ConnectionPool, and a per-test engine disposed at the end."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker


def _select_sleep(engine, n):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT :n FROM pg_sleep(0.01)"), {"n": n}).scalar()


def test_engine_pool_grows_under_threads(engine):
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(lambda n: _select_sleep(engine, n), range(32))) == list(range(32))
    assert engine.pool.checkedout() == 0


def test_barrier_forces_concurrent_checkouts(engine):
    barrier = threading.Barrier(5, timeout=10)

    def work(_):
        with engine.connect() as conn:
            barrier.wait()
            return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()

    with ThreadPoolExecutor(max_workers=5) as pool:
        pids = set(pool.map(work, range(5)))
    assert len(pids) == 5


def test_scoped_session_per_thread(engine):
    Session = scoped_session(sessionmaker(bind=engine))

    def work(n):
        try:
            return Session.execute(sa.text("SELECT :n * 2"), {"n": n}).scalar()
        finally:
            Session.remove()

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(work, range(20))) == 380


def test_writes_from_threads_commit(engine, request):
    kind = request.node.name

    def insert(n):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO events (kind, payload) VALUES (:k, jsonb_build_object('n', :n))"
                ),
                {"k": kind, "n": n},
            )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(insert, range(12)))
    with engine.begin() as conn:
        assert (
            conn.execute(sa.text("DELETE FROM events WHERE kind = :k"), {"k": kind}).rowcount == 12
        )


def test_psycopg_pool_grows_under_threads(psycopg_pool):
    def work(n):
        with psycopg_pool.connection() as conn:
            return conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (n,)).fetchone()[0]

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert sum(pool.map(work, range(24))) == sum(range(24))
    stats = psycopg_pool.get_stats()
    assert stats["pool_size"] >= 1


def test_psycopg_pool_transaction(psycopg_pool, request):
    with psycopg_pool.connection() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO events (kind) VALUES (%s)", (request.node.name,))
        conn.execute("DELETE FROM events WHERE kind = %s", (request.node.name,))


def test_psycopg_pool_error_rolls_back(psycopg_pool):
    import psycopg

    with pytest.raises(psycopg.errors.UndefinedTable), psycopg_pool.connection() as conn:
        conn.execute("SELECT * FROM not_there")
    with psycopg_pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_per_test_engine_under_threads(database_url):
    engine = sa.create_engine(database_url, pool_size=2, max_overflow=6)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda n: _select_sleep(engine, n), range(18)))
    finally:
        engine.dispose()


def test_nullpool_engine_under_threads(database_url):
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda n: _select_sleep(engine, n), range(8)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 6, 8])
def test_pool_sizes(engine, workers):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        assert (
            len(list(pool.map(lambda n: _select_sleep(engine, n), range(workers * 2))))
            == workers * 2
        )
