"""psycopg 3 used directly, as data-access layers and scripts use it: connections in
``with`` blocks, server-side (named) cursors, COPY, LISTEN/NOTIFY, advisory locks, an
error inside a transaction rolled back."""

from __future__ import annotations

import io
import threading

import pytest

psycopg = pytest.importorskip("psycopg")
from psycopg import sql  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402


@pytest.fixture
def conn(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo) as conn:
        yield conn


@pytest.fixture(scope="module")
def widgets(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS widgets"
            " (id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2))"
        )
        conn.execute("TRUNCATE widgets")
        with conn.cursor().copy("COPY widgets (id, name, price) FROM STDIN") as copy:
            for i in range(1, 501):
                copy.write_row((i, f"widget-{i}", i / 4))
    return "widgets"


def test_connect_in_a_with_block(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo) as conn:
        assert conn.execute("SELECT current_database() IS NOT NULL").fetchone() == (True,)


def test_connection_and_cursor_context_managers(conn):
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT 1 AS one, 'x' AS letter")
        assert cur.fetchone() == {"one": 1, "letter": "x"}


def test_autocommit_connection(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as conn:
        conn.execute("SET application_name = 'soak'")
        assert conn.execute("SHOW application_name").fetchone() == ("soak",)


def test_server_side_cursor(conn, widgets):
    with conn.cursor(name="widget_stream") as cur:
        cur.itersize = 50
        cur.execute("SELECT id, price FROM widgets ORDER BY id")
        assert sum(1 for _ in cur) == 500


def test_server_side_cursor_fetchmany(conn, widgets):
    with conn.transaction(), conn.cursor(name="pages", scrollable=True) as cur:
        cur.execute("SELECT id FROM widgets ORDER BY id")
        first = cur.fetchmany(100)
        cur.scroll(200)
        assert cur.fetchone()[0] == 301
        assert first[-1] == (100,)


def test_server_side_cursor_withhold(psycopg_conninfo, widgets):
    with (
        psycopg.connect(**psycopg_conninfo, autocommit=True) as conn,
        conn.cursor(name="held", withhold=True) as cur,
    ):
        cur.execute("SELECT name FROM widgets WHERE id <= 20")
        assert len(cur.fetchall()) == 20


def test_copy_to_stdout(conn, widgets):
    buf = io.BytesIO()
    with conn.cursor().copy("COPY (SELECT id, name FROM widgets WHERE id <= 10) TO STDOUT") as copy:
        for data in copy:
            buf.write(data)
    assert buf.getvalue().count(b"\n") == 10


def test_copy_from_stdin_in_a_transaction(conn):
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMP TABLE staging (k text, v int) ON COMMIT DROP")
        with conn.cursor().copy("COPY staging FROM STDIN") as copy:
            copy.write("a\t1\nb\t2\nc\t3\n")
        assert conn.execute("SELECT sum(v) FROM staging").fetchone() == (6,)


def test_copy_binary_rows(conn):
    conn.execute("CREATE TEMP TABLE bin (id int, tag text)")
    with conn.cursor().copy("COPY bin (id, tag) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "text"])
        for i in range(100):
            copy.write_row((i, f"t{i}"))
    assert conn.execute("SELECT count(*) FROM bin").fetchone() == (100,)
    conn.rollback()


def test_listen_notify(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as listener:
        listener.execute("LISTEN jobs")
        with psycopg.connect(**psycopg_conninfo, autocommit=True) as sender:
            sender.execute("SELECT pg_notify('jobs', 'job-1')")
            sender.execute("NOTIFY jobs, 'job-2'")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
        listener.execute("UNLISTEN jobs")
    assert got == ["job-1", "job-2"]


def test_notify_from_a_thread(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as listener:
        listener.execute("LISTEN cache_invalidation")

        def send():
            with psycopg.connect(**psycopg_conninfo, autocommit=True) as sender:
                sender.execute("NOTIFY cache_invalidation, 'user:42'")

        t = threading.Thread(target=send)
        t.start()
        got = next(listener.notifies(timeout=5))
        t.join()
    assert got.channel == "cache_invalidation"
    assert got.payload == "user:42"


def test_notify_is_delivered_at_commit(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as listener:
        listener.execute("LISTEN orders")
        with psycopg.connect(**psycopg_conninfo) as sender, sender.transaction():
            sender.execute("NOTIFY orders, 'placed'")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["placed"]


def test_advisory_lock_taken_and_released(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (4242,))
        try:
            with psycopg.connect(**psycopg_conninfo, autocommit=True) as other:
                assert other.execute("SELECT pg_try_advisory_lock(%s)", (4242,)).fetchone() == (
                    False,
                )
        finally:
            assert conn.execute("SELECT pg_advisory_unlock(%s)", (4242,)).fetchone() == (True,)


def test_transaction_level_advisory_lock(conn):
    with conn.transaction():
        assert conn.execute("SELECT pg_try_advisory_xact_lock(7, 11)").fetchone() == (True,)
    assert conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchone() == (0,)
    conn.commit()


def test_advisory_lock_serialises_threads(psycopg_conninfo):
    seen = []

    def critical(n):
        with psycopg.connect(**psycopg_conninfo, autocommit=True) as c:
            c.execute("SELECT pg_advisory_lock(99)")
            try:
                seen.append(n)
            finally:
                c.execute("SELECT pg_advisory_unlock(99)")

    threads = [threading.Thread(target=critical, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [0, 1, 2, 3]


def test_error_inside_a_transaction_is_rolled_back(conn, widgets):
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        conn.execute("INSERT INTO widgets (id, name) VALUES (1, 'dupe')")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT name FROM widgets WHERE id = 1").fetchone() == ("widget-1",)
    conn.rollback()


def test_aborted_transaction_then_manual_rollback(conn):
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.rollback()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.commit()


def test_savepoints_nested_transactions(conn):
    conn.execute("CREATE TEMP TABLE ledger (amount int NOT NULL)")
    with conn.transaction():
        conn.execute("INSERT INTO ledger VALUES (10)")
        with pytest.raises(psycopg.errors.NotNullViolation), conn.transaction():
            conn.execute("INSERT INTO ledger VALUES (1), (NULL)")
        conn.execute("INSERT INTO ledger VALUES (5)")
    assert conn.execute("SELECT sum(amount) FROM ledger").fetchone() == (15,)
    conn.commit()


def test_statement_timeout(psycopg_conninfo):
    with psycopg.connect(**psycopg_conninfo, options="-c statement_timeout=50") as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(1)")
        conn.rollback()


def test_executemany_and_pipeline(conn):
    conn.execute("CREATE TEMP TABLE kv (k text PRIMARY KEY, v text)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO kv VALUES (%s, %s)", [(f"k{i}", f"v{i}") for i in range(100)])
    with conn.pipeline():
        for i in range(10):
            conn.execute("UPDATE kv SET v = %s WHERE k = %s", ("new", f"k{i}"))
    assert conn.execute("SELECT count(*) FROM kv WHERE v = 'new'").fetchone() == (10,)
    conn.rollback()


def test_sql_composition(conn, widgets):
    query = sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(
        sql.Identifier(widgets), sql.Identifier("id")
    )
    assert conn.execute(query, (11,)).fetchone() == (10,)
    conn.commit()


@pytest.mark.parametrize(
    "value", [0, 1, -1, 2**31 - 1, 3.5, "text", "ünïcødé", None, True, b"\x00\x01"]
)
def test_roundtrip_types(conn, value):
    assert conn.execute("SELECT %s", (value,)).fetchone()[0] == value
    conn.commit()


@pytest.mark.parametrize("widget_id", range(1, 41))
def test_lookup_widget(conn, widgets, widget_id):
    row = conn.execute("SELECT name FROM widgets WHERE id = %s", (widget_id,)).fetchone()
    assert row == (f"widget-{widget_id}",)
