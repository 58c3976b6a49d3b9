"""An older corner of the code base: psycopg2 (reporting scripts, ``execute_values``,
named cursors, ``copy_expert``) and pg8000 (a pure-Python service), closed explicitly -
psycopg2's ``with conn:`` ends the transaction, not the connection."""

from __future__ import annotations

import io
from contextlib import closing

import pytest
import sqlalchemy as sa

pytest.importorskip("psycopg2")
pytest.importorskip("pg8000")
import pg8000.dbapi
import pg8000.native
import psycopg2
import psycopg2.errors
import psycopg2.extras


@pytest.fixture
def pg2(pg):
    conn = psycopg2.connect(**pg.connect_kwargs("psycopg2"))
    yield conn
    conn.close()


def test_psycopg2_with_closing(pg):
    # closing() closes; `with conn` ends the transaction; then the cursor
    with (
        closing(psycopg2.connect(**pg.connect_kwargs("psycopg2"))) as conn,
        conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT version()")
        assert "PostgreSQL" in cur.fetchone()[0]


def test_psycopg2_execute_values(pg2):
    with pg2, pg2.cursor() as cur:
        cur.execute("CREATE TEMP TABLE points (x int, y int)")
        psycopg2.extras.execute_values(
            cur, "INSERT INTO points VALUES %s", [(i, i * i) for i in range(200)]
        )
        cur.execute("SELECT sum(y) FROM points")
        assert cur.fetchone()[0] == sum(i * i for i in range(200))


def test_psycopg2_named_cursor(pg2):
    with pg2, pg2.cursor(name="report", cursor_factory=psycopg2.extras.DictCursor) as cur:
        cur.itersize = 100
        cur.execute("SELECT n, n * 2 AS double FROM generate_series(1, 1000) AS n")
        assert sum(row["double"] for row in cur) == 1001000


def test_psycopg2_copy_expert(pg2):
    with pg2, pg2.cursor() as cur:
        cur.execute("CREATE TEMP TABLE imported (name text, qty int)")
        cur.copy_expert(
            "COPY imported FROM STDIN WITH (FORMAT csv)", io.StringIO("a,1\nb,2\nc,3\n")
        )
        out = io.StringIO()
        cur.copy_expert(
            "COPY (SELECT * FROM imported ORDER BY name) TO STDOUT WITH (FORMAT csv)", out
        )
        assert out.getvalue() == "a,1\nb,2\nc,3\n"


def test_psycopg2_error_then_rollback(pg2):
    cur = pg2.cursor()
    with pytest.raises(psycopg2.errors.UndefinedTable):
        cur.execute("SELECT * FROM nope")
    pg2.rollback()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    cur.close()
    pg2.commit()


def test_psycopg2_listen_notify(pg):
    import select

    listener = psycopg2.connect(**pg.connect_kwargs("psycopg2"))
    try:
        listener.set_session(autocommit=True)
        with listener.cursor() as cur:
            cur.execute("LISTEN legacy")
        with closing(psycopg2.connect(**pg.connect_kwargs("psycopg2"))) as sender:
            sender.autocommit = True
            with sender.cursor() as cur:
                cur.execute("NOTIFY legacy, 'ping'")
        for _ in range(50):
            if select.select([listener], [], [], 0.1)[0]:
                listener.poll()
            if listener.notifies:
                break
        assert listener.notifies.pop(0).payload == "ping"
    finally:
        listener.close()


def test_psycopg2_advisory_xact_lock(pg2):
    with pg2, pg2.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(12345)")
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        assert cur.fetchone()[0] >= 1


def test_psycopg2_threaded_pool(pg):
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(1, 4, **pg.connect_kwargs("psycopg2"))
    try:
        conns = [pool.getconn() for _ in range(3)]
        for conn in conns:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            pool.putconn(conn)
    finally:
        pool.closeall()


def test_sqlalchemy_on_psycopg2(pg):
    engine = sa.create_engine(pg.url("psycopg2"))
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 'two'")).scalar() == "two"
    finally:
        engine.dispose()


def test_pg8000_native(pg):
    conn = pg8000.native.Connection(**pg.connect_kwargs("pg8000"))
    try:
        assert conn.run("SELECT :a::int + :b::int", a=2, b=3) == [[5]]
        conn.run("CREATE TEMP TABLE t (v text)")
        conn.run("INSERT INTO t VALUES ('x'), ('y')")
        assert conn.run("SELECT count(*) FROM t") == [[2]]
    finally:
        conn.close()


def test_pg8000_dbapi_transaction_error(pg):
    conn = pg8000.dbapi.connect(**pg.connect_kwargs("pg8000"))
    try:
        cur = conn.cursor()
        with pytest.raises(pg8000.dbapi.DatabaseError):
            cur.execute("SELECT 1 / 0")
        conn.rollback()
        cur.execute("SELECT 2")
        assert cur.fetchone() == [2]
        conn.commit()
    finally:
        conn.close()


def test_pg8000_copy(pg):
    conn = pg8000.native.Connection(**pg.connect_kwargs("pg8000"))
    try:
        conn.run("CREATE TEMP TABLE c (n int)")
        conn.run("COPY c FROM STDIN", stream=io.StringIO("1\n2\n3\n"))
        out = io.StringIO()
        conn.run("COPY c TO STDOUT", stream=out)
        assert out.getvalue() == "1\n2\n3\n"
    finally:
        conn.close()


def test_sqlalchemy_on_pg8000(pg):
    engine = sa.create_engine(pg.url("pg8000"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 3")).scalar() == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg2", "pg8000"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT 1", 1),
        ("SELECT 'a' || 'b'", "ab"),
        ("SELECT 2.5::float8", 2.5),
        ("SELECT NULL", None),
    ],
)
def test_drivers_parametrized(pg, driver, query, expected):
    if driver == "psycopg2":
        with (
            closing(psycopg2.connect(**pg.connect_kwargs("psycopg2"))) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(query)
            assert cur.fetchone()[0] == expected
    else:
        conn = pg8000.native.Connection(**pg.connect_kwargs("pg8000"))
        try:
            assert conn.run(query)[0][0] == expected
        finally:
            conn.close()
