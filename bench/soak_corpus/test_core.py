import threading

import pymysql
import pytest
import sqlalchemy as sa


def test_connect_and_close(engine):
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_begin_commits(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT COUNT(*) FROM item"))


def test_pool_grows_under_threads(engine):
    barrier = threading.Barrier(4, timeout=10)

    def work():
        with engine.connect() as conn:
            barrier.wait()
            conn.execute(sa.text("SELECT 1"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_raw_dbapi_connection_closed(dbleak_mysql_url):
    u = sa.engine.make_url(dbleak_mysql_url)
    conn = pymysql.connect(
        host=u.host,
        port=u.port,
        user=u.username,
        password=u.password,
        database=u.database,
        ssl_disabled=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()


def test_engine_per_test_disposed(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def test_engine_that_never_connects(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    assert engine.dialect.name == "mysql"


def test_dispose_then_reuse_a_shared_engine(engine):
    engine.dispose()
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_nullpool_module_engine(module_engine):
    with module_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_static_pool(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.StaticPool)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_raw_connection_of_pool_rolled_back(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_reset_on_return=None)
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("SELECT COUNT(*) FROM item")
    cur.close()
    raw.rollback()
    raw.close()
    engine.dispose()


def test_failed_query_is_cleaned_up(engine):
    with pytest.raises(sa.exc.ProgrammingError), engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))


@pytest.mark.parametrize("n", range(20))
def test_many_small_queries(engine, n):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT :n"), {"n": n})
