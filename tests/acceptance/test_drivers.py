"""Every sync MySQL driver, every leak kind: the leaky test fails naming the user's line,
its clean twin passes. The session database comes from ``dbleak_database`` in each
driver's own spelling (URL and connect keywords).

Async drivers (aiomysql, asyncmy) are in test_async.py.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, failure_of, line_of

# (dbleak_database driver name, the module its raw connect() lives in)
SYNC_DRIVERS = {
    "pymysql": "pymysql",
    "mysqldb": "MySQLdb",
    "mysqlconnector": "mysql.connector",
    "mariadbconnector": "mariadb",
}

EVERY_KIND = '''
import importlib

NAME = "{name}"
DRIVER = importlib.import_module("{module}")


def test_leaky_raw_connection(dbleak_database):
    KEEP.append(DRIVER.connect(**dbleak_database.connect_kwargs(NAME)))  # LEAK-raw


def test_clean_raw_connection(dbleak_database):
    DRIVER.connect(**dbleak_database.connect_kwargs(NAME)).close()


def test_leaky_checkout(dbleak_database):
    engine = sa.create_engine(dbleak_database.url(NAME))
    KEEP.append(engine.connect())  # LEAK-checkout


def test_clean_checkout(dbleak_database):
    engine = sa.create_engine(dbleak_database.url(NAME))
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_leaky_engine(dbleak_database):
    engine = sa.create_engine(dbleak_database.url(NAME))  # LEAK-engine
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    KEEP.append(engine)


def test_leaky_gc_return(dbleak_database):
    engine = sa.create_engine(dbleak_database.url(NAME))
    conn = engine.connect()  # LEAK-gc
    conn.execute(sa.text("SELECT 1"))
    del conn
    gc.collect()
    engine.dispose()


def test_clean_gc_return(dbleak_database):
    engine = sa.create_engine(dbleak_database.url(NAME))
    conn = engine.connect()
    conn.execute(sa.text("SELECT 1"))
    conn.close()
    del conn
    gc.collect()
    engine.dispose()


@pytest.fixture(scope="module")
def app_engine(dbleak_database):
    """The application's engine: outlives every test, never resets on return."""
    engine = sa.create_engine(dbleak_database.url(NAME), pool_reset_on_return=None)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t_{name} (id INT PRIMARY KEY) ENGINE=InnoDB"))
    yield engine
    engine.dispose()


def insert_and_return(engine, ident, end=None):
    # SQLAlchemy's Connection.close() rolls back; a raw pooled connection does not.
    raw = engine.raw_connection()  # LEAK-trx
    cursor = raw.cursor()
    cursor.execute(f"INSERT INTO t_{name} VALUES ({{ident}})")
    cursor.close()
    if end is not None:
        getattr(raw, end)()
    raw.close()  # back in the pool: without `end`, neither committed nor rolled back


def test_leaky_transaction(app_engine):
    insert_and_return(app_engine, 1)


def test_clean_transaction(app_engine):
    insert_and_return(app_engine, 2, end="commit")
'''


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_every_leak_kind_of_every_sync_driver_fails_at_the_users_line_and_its_twin_passes(
    pytester: pytest.Pytester, driver: str
) -> None:
    module = SYNC_DRIVERS[driver]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed (pip install 'pytest-dbleak[{driver}]')")
    source = EVERY_KIND.format(name=driver, module=module)
    name = f"test_{driver}"
    pytester.makepyfile(**{name: PREAMBLE + source})
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )

    result.assert_outcomes(failed=5, passed=4)
    full = PREAMBLE + source
    for test, kind, marker in (
        ("test_leaky_raw_connection", "server_connection", "# LEAK-raw"),
        ("test_leaky_checkout", "checked_out", "# LEAK-checkout"),
        ("test_leaky_gc_return", "gc_return", "# LEAK-gc"),
        ("test_leaky_engine", "undisposed_engine", "# LEAK-engine"),
        ("test_leaky_transaction", "open_transaction", "# LEAK-trx"),
    ):
        line = line_of(full, marker)
        block = failure_of(result, test)
        assert block.lines[1] == f"dbleak: 1 connection leaked (1 {kind}) at {name}.py:{line}", (
            block.str()
        )
        block.fnmatch_lines([f"    {name}.py:{line} in *"])


SERVER_TRANSACTIONS = '''
import mysql.connector.pooling


@pytest.fixture(scope="module")
def cnx_pool(dbleak_database):
    """mysql-connector's own pool, created by a module fixture; no session reset on return."""
    pool = mysql.connector.pooling.MySQLConnectionPool(
        pool_name="app", pool_size=2, pool_reset_session=False,
        **dbleak_database.connect_kwargs("mysqlconnector"),
    )
    cnx = pool.get_connection()
    cursor = cnx.cursor()
    cursor.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT) ENGINE=InnoDB")
    cursor.execute("INSERT INTO accounts VALUES (1, 100), (2, 100), (3, 100), (4, 100), (5, 1)")
    cnx.commit()
    cursor.close()
    cnx.close()
    return pool


def withdraw(pool, account, fail):
    cnx = pool.get_connection()  # LEAK-pooled
    cursor = cnx.cursor()
    cursor.execute(f"UPDATE accounts SET balance = balance - 10 WHERE id = {account}")
    if not fail:
        cnx.commit()
    cursor.close()
    cnx.close()  # the error path gives the connection back with its transaction open


def test_leaky_transaction_of_a_driver_pool(cnx_pool):
    withdraw(cnx_pool, 1, fail=True)


def test_clean_transaction_of_a_driver_pool(cnx_pool):
    withdraw(cnx_pool, 2, fail=False)


@pytest.fixture(scope="module")
def raw(dbleak_database, cnx_pool):
    conn = pymysql.connect(**dbleak_database.connect_kwargs("pymysql"))  # LEAK-fixture
    yield conn
    conn.close()


def test_leaky_transaction_on_a_fixture_connection(raw):
    with raw.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts WHERE id = 3 FOR UPDATE")


def test_clean_transaction_on_a_fixture_connection(raw):
    with raw.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts WHERE id = 4 FOR UPDATE")
    raw.rollback()


@pytest.fixture(scope="module")
def locked(dbleak_database, cnx_pool):
    """A wider-scoped fixture that begins a transaction for its tests: its own."""
    conn = pymysql.connect(**dbleak_database.connect_kwargs("pymysql"))
    with conn.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts WHERE id = 5 FOR UPDATE")
    yield conn
    conn.rollback()
    conn.close()


def test_clean_transaction_a_wider_fixture_began(locked):
    with locked.cursor() as cursor:
        cursor.execute("SELECT balance FROM accounts WHERE id = 5")
'''


def test_a_transaction_left_open_outside_every_sqlalchemy_pool_fails_the_test(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    if importlib.util.find_spec("mysql") is None:
        pytest.skip("mysql-connector-python is not installed")
    pytester.makepyfile(test_server_trx=PREAMBLE + SERVER_TRANSACTIONS)
    result = pytester.runpytest_subprocess("--dbleak", *backend_args, FAST, *ONLY_DBLEAK)

    result.assert_outcomes(failed=2, passed=3)
    full = PREAMBLE + SERVER_TRANSACTIONS
    for test, marker in (
        ("test_leaky_transaction_of_a_driver_pool", "# LEAK-pooled"),
        ("test_leaky_transaction_on_a_fixture_connection", "# LEAK-fixture"),
    ):
        line = line_of(full, marker)
        failure_of(result, test).fnmatch_lines(
            [
                f"dbleak: 1 connection leaked (1 open_transaction) at test_server_trx.py:{line}",
                "*server connection * idle inside a transaction that began during the test "
                "(began ????-??-?? ??:??:??, 1 row lock*); no pool of this process holds it",
                f"    test_server_trx.py:{line} in *",
            ]
        )
