"""A leak, once reported, is taken back: later tests start from a healthy pool and
server, and the blame stays on the test that leaked."""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import FAST, MODULE_ENGINE, ONLY_DBLEAK, PREAMBLE

SMALL_POOL = (
    PREAMBLE
    + """

@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_size=2, max_overflow=0, pool_timeout=3)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("n", range(5))
def test_a_leaky(engine, n):
    KEEP.append(engine.connect())


@pytest.mark.parametrize("n", range(5))
def test_b_clean(engine, n):
    # The leaks before were taken back: every slot is free, nothing to wait for.
    assert engine.pool.checkedout() == 0
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
"""
)


def test_leaks_that_exhaust_a_small_pool_are_reclaimed_and_later_tests_pass_at_once(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    pytester.makepyfile(test_pool=SMALL_POOL)
    result = pytester.runpytest_subprocess("--dbleak", *backend_args, FAST, *ONLY_DBLEAK)
    result.assert_outcomes(failed=5, passed=5)


def test_without_reclaiming_the_same_leaks_leave_innocent_tests_an_exhausted_pool(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_pool=SMALL_POOL.replace("pool_timeout=3", "pool_timeout=0.5"))
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, "--no-dbleak-reclaim", *ONLY_DBLEAK
    )
    # Two leaks fill the pool; the next three leaky tests time out, every clean one finds
    # the pool full.
    result.assert_outcomes(failed=10)
    result.stdout.fnmatch_lines(["FAILED test_pool.py::test_b_clean[[]0[]] - assert 2 == 0*"])


EACH_KIND = (
    PREAMBLE
    + """

@pytest.fixture(scope="session")
def lazy(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_reset_on_return=None, pool_size=1,
                              max_overflow=0)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id INT) ENGINE=InnoDB"))
    yield engine
    engine.dispose()


def test_1_leaves_a_raw_connection(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


def test_2_the_raw_connection_still_works_for_its_holder():
    KEEP[-1].ping(reconnect=False)  # still referenced: never killed
    KEEP.pop().close()


def test_3_leaves_a_transaction_open(lazy):
    raw = lazy.raw_connection()
    raw.cursor().execute("SELECT * FROM items")
    raw.close()


def test_4_the_transaction_was_rolled_back(lazy, dbleak):
    assert dbleak.pool_status(lazy).idle == 1
    with lazy.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@in_transaction").scalar() == 0


def test_5_leaves_an_engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    engine.connect().close()
    KEEP.append(engine)


def test_6_the_engine_was_disposed(dbleak):
    assert dbleak.pool_status(KEEP[-1]).open == 0


def test_6a_leaves_a_checked_out_connection(lazy):
    conn = lazy.connect()
    conn.execute(sa.text("SELECT 1"))
    conn.commit()
    KEEP.append(conn)


def test_6b_the_pool_has_its_slot_back_and_the_holder_a_working_connection(lazy, dbleak):
    with lazy.connect() as mine:  # the pool's only slot: free again
        assert mine.execute(sa.text("SELECT 1")).scalar() == 1
    assert KEEP[-1].execute(sa.text("SELECT 2")).scalar() == 2
    KEEP.pop().close()  # detached: closed for real
    assert dbleak.pool_status(lazy).checked_out == 0


@pytest.mark.dbleak(allow=1)
def test_7_a_tolerated_leak(lazy):
    KEEP.append(lazy.connect())


def test_8_a_tolerated_leak_is_left_alone(lazy, dbleak):
    assert dbleak.pool_status(lazy).checked_out == 1
"""
)


def test_every_kind_of_leak_is_taken_back_without_harming_its_holder_and_a_tolerated_one_is_left(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_kinds=EACH_KIND)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )
    result.assert_outcomes(failed=4, passed=6)
    for name in (
        "test_1_leaves_a_raw_connection",
        "test_3_leaves_a_transaction_open",
        "test_5_leaves_an_engine",
        "test_6a_leaves_a_checked_out_connection",
    ):
        result.stdout.fnmatch_lines([f"FAILED test_kinds.py::{name} - dbleak: *"])


STUCK = (
    PREAMBLE
    + "\nfrom sqlalchemy.orm import Session\n"
    + MODULE_ENGINE
    + """

@pytest.fixture
def todo(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE todo (id INT) ENGINE=InnoDB"))
    yield
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE todo"))  # WAITS


def test_leaves_a_session_open(engine, todo):
    session = Session(engine)
    session.execute(sa.text("SELECT * FROM todo"))  # HOLDS
    KEEP.append(session)


def test_after_it(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
"""
)


def test_a_statement_stuck_behind_a_leaked_transaction_is_interrupted_and_named(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    from tests.acceptance.helpers import failure_of, line_of

    pytester.makepyfile(test_stuck=STUCK)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        *backend_args,
        FAST,
        "--dbleak-lock-wait=1",
        *ONLY_DBLEAK,
        timeout=120,
    )
    result.assert_outcomes(passed=1, errors=1)
    # Interrupted by the lock watch (1317 below), not ended by the server's own lock wait
    # timeout (1205, after innodb_lock_wait_timeout): the error code says so, no clock.
    waits = line_of(STUCK, "# WAITS")
    block = failure_of(result, "test_leaves_a_session_open")
    block.fnmatch_lines(
        [
            "E * (1317, 'Query execution was interrupted')",
            "*- dbleak -*",
            "dbleak: 1 connection leaked (1 checked_out, lock_wait) at test_stuck.py:*",
            "*statement stuck behind a lock*: statement on server connection * waited * s "
            "(Waiting for table metadata lock) and was interrupted: DROP TABLE todo; idle in a "
            "transaction meanwhile: server connection * (in a transaction since *, checked out "
            f"at test_stuck.py:{line_of(STUCK, '# HOLDS')} in test_leaves_a_session_open)",
            f"    test_stuck.py:{waits} in todo",
        ]
    )


FLASK_STREAM = (
    PREAMBLE
    + """
from flask import Flask, Response, stream_with_context
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


@pytest.fixture(scope="module")
def app(dbleak_mysql_url):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = dbleak_mysql_url
    db.init_app(app)

    @app.get("/items")
    def items():
        def rows():
            for row in db.session.execute(sa.text("SELECT id FROM item")):  # HOLDS
                yield f"{row.id}\\n"

        return Response(stream_with_context(rows()))

    @app.get("/count")
    def count():
        return str(db.session.execute(sa.text("SELECT COUNT(*) FROM item")).scalar())

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE item (id INT) ENGINE=InnoDB"))
            conn.execute(sa.text("INSERT INTO item VALUES (1), (2)"))
    yield app
    with app.app_context():
        db.engine.dispose()


def test_1_streams_and_leaves_the_response_open(app):
    response = app.test_client().get("/items")
    next(response.response)
    KEEP.append(response)  # CLOSE


def test_2_counts_through_the_same_app(app):
    assert app.test_client().get("/count").text == "2"
"""
)


@pytest.mark.parametrize("reclaim", [True, False], ids=["reclaim", "no-reclaim"])
def test_a_streamed_response_left_open_fails_and_the_next_clean_test_through_the_app_passes(
    pytester: pytest.Pytester, backend_args: list[str], reclaim: bool
) -> None:
    from tests.acceptance.helpers import line_of

    pytester.makepyfile(test_flask=FLASK_STREAM)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        *backend_args,
        FAST,
        "--dbleak-lock-wait=1",
        *([] if reclaim else ["--no-dbleak-reclaim"]),
        *ONLY_DBLEAK,
        timeout=60,
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "dbleak: 1 connection leaked (1 checked_out) at "
            f"test_flask.py:{line_of(FLASK_STREAM, '# HOLDS')}",
            "FAILED test_flask.py::test_1_streams_and_leaves_the_response_open - dbleak: *",
        ]
    )


def test_its_clean_twin_closes_the_response_and_both_pass(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    pytester.makepyfile(
        test_flask=FLASK_STREAM.replace("KEEP.append(response)  # CLOSE", "response.close()")
    )
    result = pytester.runpytest_subprocess(
        "--dbleak", *backend_args, FAST, "--dbleak-lock-wait=1", *ONLY_DBLEAK, timeout=60
    )
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("args", "outcomes"),
    [
        (("test_flask.py::test_1_streams_and_leaves_the_response_open",), {"failed": 1}),
        (("test_flask.py::test_2_counts_through_the_same_app",), {"passed": 1}),
        (("-n", "2"), {"failed": 1, "passed": 1}),
    ],
    ids=["leaky-alone", "clean-alone", "xdist"],
)
def test_the_streamed_response_verdicts_alone_by_node_id_and_under_xdist(
    pytester: pytest.Pytester, args: tuple[str, ...], outcomes: dict[str, int]
) -> None:
    from tests.acceptance.helpers import only_dbleak_and

    pytester.makepyfile(test_flask=FLASK_STREAM)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        FAST,
        "--dbleak-lock-wait=1",
        *only_dbleak_and("xdist"),
        *args,
        timeout=60,
    )
    result.assert_outcomes(**outcomes)
