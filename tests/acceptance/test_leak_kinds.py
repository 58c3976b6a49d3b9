"""Every kind of leak fails the test that made it, on both backends; each has a clean twin
that passes in the same run.

A failing test is reported as a failed test whose first line names the kind and the
leak site (file:line in the test module), with its own ``dbleak`` report section.
"""

from __future__ import annotations

from fnmatch import fnmatch

import pytest

from tests.acceptance.helpers import (
    FAST,
    MODULE_ENGINE,
    ONLY_DBLEAK,
    PREAMBLE,
    failure_of,
    line_of,
)


def run(pytester: pytest.Pytester, backend_args: list[str], **modules: str) -> pytest.RunResult:
    pytester.makepyfile(**{name: PREAMBLE + source for name, source in modules.items()})
    return pytester.runpytest_subprocess("--dbleak", *backend_args, FAST, *ONLY_DBLEAK)


def assert_leak_reported(
    result: pytest.RunResult, test_name: str, headline: str, *details: str
) -> None:
    """The test's failure starts with `headline` and carries a dbleak section."""
    block = failure_of(result, test_name)
    assert fnmatch(block.lines[1], headline), block.str()
    block.fnmatch_lines([*details, "*- dbleak -*", "server connections of the session: *"])


CHECKED_OUT = """
POOLS = {"QueuePool": sa.pool.QueuePool, "NullPool": sa.pool.NullPool,
         "StaticPool": sa.pool.StaticPool, "SingletonThreadPool": sa.pool.SingletonThreadPool}


@pytest.mark.parametrize("pool", POOLS)
def test_leaky_checkout(dbleak_mysql_url, pool):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=POOLS[pool])
    KEEP.append(engine.connect())  # LEAK-checkout


@pytest.mark.parametrize("pool", POOLS)
def test_clean_checkout(dbleak_mysql_url, pool):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=POOLS[pool])
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_leaky_checkout_in_a_thread(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    in_thread(lambda: KEEP.append(engine.connect()))  # LEAK-thread


def test_clean_checkout_in_a_thread(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    in_thread(lambda: engine.connect().close())
    engine.dispose()
"""


def test_a_connection_checked_out_and_never_returned_fails_the_test_for_every_pool_class(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_checkout=CHECKED_OUT)

    result.assert_outcomes(failed=5, passed=5)
    source = PREAMBLE + CHECKED_OUT
    line = line_of(source, "# LEAK-checkout")
    for pool in ("QueuePool", "NullPool", "StaticPool", "SingletonThreadPool"):
        assert_leak_reported(
            result,
            f"test_leaky_checkout[{pool}]",
            f"dbleak: 1 connection leaked (1 checked_out) at test_checkout.py:{line}",
            f"checked-out connection never returned: server connection * of {pool} checked out",
            f"    test_checkout.py:{line} in test_leaky_checkout",
        )
    line = line_of(source, "# LEAK-thread")
    assert_leak_reported(
        result,
        "test_leaky_checkout_in_a_thread",
        f"dbleak: 1 connection leaked (1 checked_out) at test_checkout.py:{line}",
        "checked-out connection never returned: * of QueuePool checked out",
        "    in thread worker",
        f"    test_checkout.py:{line} in <lambda>",
    )
    result.stdout.no_fnmatch_line("FAILED *test_clean_*")


SERVER_CONNECTION = """
def test_leaky_raw_connection(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))  # LEAK-raw


def test_clean_raw_connection(dbleak_mysql_url):
    pymysql.connect(**connect_args(dbleak_mysql_url)).close()


def test_leaky_raw_connection_in_a_thread(dbleak_mysql_url):
    in_thread(lambda: KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url))))  # LEAK-th


def test_clean_raw_connection_in_a_thread(dbleak_mysql_url):
    in_thread(lambda: pymysql.connect(**connect_args(dbleak_mysql_url)).close())
"""


def test_a_server_connection_no_pool_explains_fails_the_test_and_names_where_it_was_opened(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_raw=SERVER_CONNECTION)

    result.assert_outcomes(failed=2, passed=2)
    source = PREAMBLE + SERVER_CONNECTION
    line = line_of(source, "# LEAK-raw")
    assert_leak_reported(
        result,
        "test_leaky_raw_connection",
        f"dbleak: 1 connection leaked (1 server_connection) at test_raw.py:{line}",
        "server connection left open: server connection * opened during the test and still "
        "open; no pool of this process owns it",
        f"    test_raw.py:{line} in test_leaky_raw_connection",
    )
    line = line_of(source, "# LEAK-th")
    assert_leak_reported(
        result,
        "test_leaky_raw_connection_in_a_thread",
        f"dbleak: 1 connection leaked (1 server_connection) at test_raw.py:{line}",
        "server connection left open: *",
        "    in thread worker",
        f"    test_raw.py:{line} in <lambda>",
    )
    # The processlist row of the leaked connection is in the section.
    failure_of(result, "test_leaky_raw_connection").fnmatch_lines(
        ["processlist rows left behind:", "  id *user *host *", "  * Sleep *"]
    )


OPEN_TRANSACTION = '''
@pytest.fixture(scope="module")
def engine(dbleak_mysql_url):
    """The application's engine: outlives every test, never resets on return."""
    engine = sa.create_engine(dbleak_mysql_url, pool_reset_on_return=None)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20)) "
            "ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO items (name) VALUES ('first')"))
    yield engine
    engine.dispose()


def run_and_return(engine, sql, end=None):
    """Run `sql` on a raw pooled connection, optionally end the transaction, give it back.

    SQLAlchemy's Connection.close() rolls back; a raw connection does not.
    """
    raw = engine.raw_connection()  # LEAK-trx
    cursor = raw.cursor()
    cursor.execute(sql)
    cursor.fetchall()
    cursor.close()
    if end is not None:
        getattr(raw, end)()
    raw.close()


def test_leaky_read_transaction(engine):
    run_and_return(engine, "SELECT * FROM items")


def test_clean_read_transaction_committed(engine):
    run_and_return(engine, "SELECT * FROM items", end="commit")


def test_leaky_write_transaction(engine):
    run_and_return(engine, "INSERT INTO items (name) VALUES ('second')")


def test_clean_write_transaction_rolled_back(engine):
    run_and_return(engine, "INSERT INTO items (name) VALUES ('third')", end="rollback")
'''


def test_an_open_transaction_on_a_connection_idle_in_a_pool_fails_the_test(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_trx=OPEN_TRANSACTION)

    result.assert_outcomes(failed=2, passed=2)
    line = line_of(PREAMBLE + OPEN_TRANSACTION, "# LEAK-trx")
    # The process backend's MariaDB loads METADATA_LOCK_INFO: the line names the table.
    tables = ", metadata locks on *.items" if "--dbleak-backend=process" in backend_args else "*"
    for name, holds in (
        ("test_leaky_read_transaction", ""),
        ("test_leaky_write_transaction", "*1 row modified"),
    ):
        assert_leak_reported(
            result,
            name,
            f"dbleak: 1 connection leaked (1 open_transaction) at test_trx.py:{line}",
            "open transaction on a connection idle in a pool: server connection * of "
            f"QueuePool idle in a pool inside a transaction (began ????-??-?? ??:??:??{holds}"
            f"{tables})",
            f"    test_trx.py:*in {name}",
            f"    test_trx.py:{line} in run_and_return",
        )


UNDISPOSED_ENGINE = """
def use(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_leaky_engine_kept_alive(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)  # LEAK-alive
    use(engine)
    KEEP.append(engine)


def test_clean_engine_disposed(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    use(engine)
    engine.dispose()
    KEEP.append(engine)


def test_leaky_engine_reclaimed_by_the_garbage_collector(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)  # LEAK-gc
    use(engine)
    del engine
    gc.collect()


def test_clean_engine_disposed_then_reclaimed(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    use(engine)
    engine.dispose()
    del engine
    gc.collect()


def test_an_engine_that_never_connected_is_not_a_leak(dbleak_mysql_url):
    KEEP.append(sa.create_engine(dbleak_mysql_url))
"""


def test_an_engine_created_during_the_test_and_never_disposed_fails_the_test(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_engines=UNDISPOSED_ENGINE)

    result.assert_outcomes(failed=2, passed=3)
    source = PREAMBLE + UNDISPOSED_ENGINE
    line = line_of(source, "# LEAK-alive")
    assert_leak_reported(
        result,
        "test_leaky_engine_kept_alive",
        f"dbleak: 1 connection leaked (1 undisposed_engine) at test_engines.py:{line}",
        "engine created and never disposed: QueuePool still alive without dispose(), "
        "holding 1 server connection",
    )
    line = line_of(source, "# LEAK-gc")
    assert_leak_reported(
        result,
        "test_leaky_engine_reclaimed_by_the_garbage_collector",
        f"dbleak: 1 connection leaked (1 undisposed_engine) at test_engines.py:{line}",
        "engine created and never disposed: QueuePool reclaimed by the garbage collector "
        "without dispose(), 1 server connection closed only by the garbage collector",
    )


OLDER_ENGINE_DISPOSED = '''
@pytest.fixture(scope="session")
def app_engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_app_engine(app_engine):
    """A common pattern: drop the shared engine's connections after each test."""
    yield app_engine
    app_engine.dispose()


def test_the_shared_engine_is_set_up(fresh_app_engine):
    fresh_app_engine.connect().close()


def test_leaky_engine_while_the_shared_one_is_disposed(dbleak_mysql_url, fresh_app_engine):
    engine = sa.create_engine(dbleak_mysql_url)  # LEAK-engine
    engine.connect().close()
    KEEP.append(engine)


def test_leaky_engine_then_disposing_an_engine_from_before_the_test(dbleak_mysql_url, app_engine):
    engine = sa.create_engine(dbleak_mysql_url)  # LEAK-then-dispose
    engine.connect().close()
    KEEP.append(engine)
    app_engine.dispose()
'''


def test_an_undisposed_engine_is_found_even_when_the_test_disposes_an_older_engine(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_dispose=OLDER_ENGINE_DISPOSED)

    result.assert_outcomes(failed=2, passed=1)
    source = PREAMBLE + OLDER_ENGINE_DISPOSED
    for name, marker in (
        ("test_leaky_engine_while_the_shared_one_is_disposed", "# LEAK-engine"),
        ("test_leaky_engine_then_disposing_an_engine_from_before_the_test", "# LEAK-then-dispose"),
    ):
        assert_leak_reported(
            result,
            name,
            "dbleak: 1 connection leaked (1 undisposed_engine) at "
            f"test_dispose.py:{line_of(source, marker)}",
        )


GC_RETURN = """
def test_leaky_connection_given_back_by_the_garbage_collector(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()  # LEAK-gc-return
    conn.execute(sa.text("SELECT 1"))
    del conn
    gc.collect()
    engine.dispose()


def test_clean_connection_closed(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()
    conn.execute(sa.text("SELECT 1"))
    conn.close()
    del conn
    gc.collect()
    engine.dispose()
"""


def test_a_connection_given_back_only_by_the_garbage_collector_fails_the_test(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_gc=GC_RETURN)

    result.assert_outcomes(failed=1, passed=1)
    line = line_of(PREAMBLE + GC_RETURN, "# LEAK-gc-return")
    assert_leak_reported(
        result,
        "test_leaky_connection_given_back_by_the_garbage_collector",
        f"dbleak: 1 connection leaked (1 gc_return) at test_gc.py:{line}",
        "connection returned only by the garbage collector, never by close(): server "
        "connection * of QueuePool was checked out here and dropped without close()",
        f"    test_gc.py:{line} in test_leaky_connection_given_back_by_the_garbage_collector",
    )


CYCLE = (
    MODULE_ENGINE
    + """

class Holder:
    def __init__(self, conn):
        self.conn = conn
        self.me = self  # a reference cycle: only the garbage collector frees it


def test_leaky_connection_left_in_a_reference_cycle(engine):
    Holder(engine.connect())  # LEAK-cycle


def test_leaky_connection_in_a_cycle_a_collection_moved_to_the_oldest_generation(engine):
    holder = Holder(engine.connect())  # LEAK-aged
    gc.collect(1)  # still referenced: the cycle survives into the oldest generation
    del holder


def test_clean_connection_closed_before_its_cycle_is_dropped(engine):
    holder = Holder(engine.connect())
    holder.conn.close()
    del holder
"""
)


def test_a_connection_only_a_reference_cycle_held_is_given_back_and_fails_its_test(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    result = run(pytester, backend_args, test_cycle=CYCLE)

    result.assert_outcomes(failed=2, passed=1)
    source = PREAMBLE + CYCLE
    for name, marker in (
        ("test_leaky_connection_left_in_a_reference_cycle", "# LEAK-cycle"),
        (
            "test_leaky_connection_in_a_cycle_a_collection_moved_to_the_oldest_generation",
            "# LEAK-aged",
        ),
    ):
        line = line_of(source, marker)
        assert_leak_reported(
            result,
            name,
            f"dbleak: 1 connection leaked (1 gc_return) at test_cycle.py:{line}",
            "connection returned only by the garbage collector, never by close(): *",
            f"    test_cycle.py:{line} in {name}",
        )
