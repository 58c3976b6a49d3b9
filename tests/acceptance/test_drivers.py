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

    result.assert_outcomes(failed=4, passed=3)
    full = PREAMBLE + source
    for test, kind, marker in (
        ("test_leaky_raw_connection", "server_connection", "# LEAK-raw"),
        ("test_leaky_checkout", "checked_out", "# LEAK-checkout"),
        ("test_leaky_engine", "undisposed_engine", "# LEAK-engine"),
        ("test_leaky_transaction", "open_transaction", "# LEAK-trx"),
    ):
        line = line_of(full, marker)
        block = failure_of(result, test)
        assert block.lines[1] == f"dbleak: 1 connection leaked (1 {kind}) at {name}.py:{line}", (
            block.str()
        )
        block.fnmatch_lines([f"    {name}.py:{line} in *"])
