"""The detector in process: a real Tracker and real SQLAlchemy pools on SQLite files, the
server side a processlist the test sets (tests/unit/doubles.py). No server, no pytester:
each window is opened and judged the way the pytest layer does it (manager.py:
``begin(reuse=True)``, ``finish(window, nodeid, allow=, settle=, patient=)``,
``reclaim(closed.reclaim)``).

Every test checks the kinds and counts exactly, and where the leak was made.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool, QueuePool

from pytest_dbleak.engine.detector import Detector
from pytest_dbleak.engine.results import CheckResult
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.engine.window import GENERATIONAL_GC
from tests.unit.doubles import APP_USER, SnapshotServer, next_line

HERE = "tests/unit/test_core_detector.py"


def kinds(result: CheckResult) -> list[tuple[str, int]]:
    return [(leak.kind, leak.count) for leak in result.leaks]


def sqlite_engine(path: Path) -> Engine:
    # QueuePool, so that a checkout takes a real connection from a real pool (SQLite's
    # file engines default to QueuePool in SQLAlchemy 2; said here so that it stays so).
    return sa.create_engine(f"sqlite:///{path}", poolclass=QueuePool)


@pytest.fixture
def engine(tracker: Tracker, tmp_path: Path) -> Iterator[Engine]:
    """An engine of wider scope: created before the test's windows, disposed after."""
    made = sqlite_engine(tmp_path / "wide.db")
    yield made
    made.dispose()


def test_a_clean_window_gives_no_leak(detector: Detector, tmp_path: Path) -> None:
    window = detector.begin(reuse=True)
    local = sqlite_engine(tmp_path / "clean.db")
    with local.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
    local.dispose()

    result = detector.finish(window, "t::clean", allow=0, settle=0)

    assert result.leaks == ()
    assert (result.leaked, result.failed) == (0, False)
    assert result.after.checked_out == 0


def test_a_checked_out_connection_is_named_at_its_line_and_reclaim_frees_its_slot(
    detector: Detector, engine: Engine
) -> None:
    window = detector.begin(reuse=True)
    line = next_line()
    held = engine.connect()
    held.execute(sa.text("select 1"))

    closed = detector.close(window, "t::checked_out", allow=0, settle=0)
    result = closed.result

    assert kinds(result) == [("checked_out", 1)]
    assert result.failed
    site = result.leaks[0].site
    assert site is not None
    assert (site.file, site.line) == (HERE, line)
    assert result.after.checked_out == result.before.checked_out + 1

    detector.reclaim(closed.reclaim)
    pool: Pool = engine.pool
    assert pool.checkedout() == 0  # the pool has its slot back...
    assert held.execute(sa.text("select 2")).scalar() == 2  # ...and the holder its connection
    held.close()


def test_a_connection_checked_out_before_the_window_is_not_its_leak(
    detector: Detector, engine: Engine
) -> None:
    earlier = engine.connect()
    window = detector.begin(reuse=True)
    result = detector.finish(window, "t::later", allow=0, settle=0)
    earlier.close()
    assert result.leaks == ()


def test_an_engine_never_disposed_is_named_where_it_was_created(
    detector: Detector, tracker: Tracker, tmp_path: Path
) -> None:
    window = detector.begin(reuse=True)
    line = next_line()
    local = sa.create_engine(f"sqlite:///{tmp_path / 'undisposed.db'}", poolclass=QueuePool)
    with local.connect() as conn:
        conn.execute(sa.text("select 1"))

    closed = detector.close(window, "t::undisposed", allow=0, settle=0)
    result = closed.result

    assert kinds(result) == [("undisposed_engine", 1)]  # its one idle connection
    leak = result.leaks[0]
    assert leak.site is not None
    assert (leak.site.file, leak.site.line) == (HERE, line)
    assert "QueuePool still alive without dispose()" in leak.what

    detector.reclaim(closed.reclaim)  # disposes it: the idle connection is closed
    assert tracker.states[local.pool].open == {}
    local.dispose()


@pytest.mark.no_dbleak  # the session's own gate would see the same dropped connection
def test_a_connection_dropped_without_close_is_a_gc_return(
    detector: Detector, engine: Engine
) -> None:
    window = detector.begin(reuse=True)
    line = next_line()
    dropped = engine.connect()
    del dropped  # CPython gives it back to the pool now, through its weak reference

    result = detector.finish(window, "t::gc_return", allow=0, settle=0)

    assert kinds(result) == [("gc_return", 1)]
    leak = result.leaks[0]
    assert leak.site is not None
    assert (leak.site.file, leak.site.line) == (HERE, line)
    assert engine.pool.checkedout() == 0


@pytest.mark.no_dbleak  # the session's own gate would see the same collected pool
def test_a_pool_the_garbage_collector_took_is_an_engine_never_disposed(
    detector: Detector, tmp_path: Path
) -> None:
    window = detector.begin(reuse=True)
    line = next_line()
    local = sa.create_engine(f"sqlite:///{tmp_path / 'collected.db'}", poolclass=QueuePool)
    with local.connect() as conn:
        conn.execute(sa.text("select 1"))
    del local, conn
    with warnings.catch_warnings():
        # Python 3.13's sqlite3 warns about the connection nobody closed: that is the leak.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    result = detector.finish(window, "t::collected", allow=0, settle=0)

    assert kinds(result) == [("undisposed_engine", 1)]
    leak = result.leaks[0]
    assert "reclaimed by the garbage collector without dispose()" in leak.what
    assert leak.site is not None
    assert (leak.site.file, leak.site.line) == (HERE, line)


@pytest.fixture
def only_explicit_collections() -> Iterator[None]:
    """No automatic collection during the test: which generations a window's objects
    reach is then up to the test alone."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def full_collections() -> int:
    return gc.get_stats()[2]["collections"]


class Cycle:
    """A connection held by nothing but a reference cycle once dropped."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.me = self


@pytest.mark.skipif(not GENERATIONAL_GC, reason="needs CPython's generational collector")
@pytest.mark.no_dbleak  # the session's own gate would see the same dropped connections
@pytest.mark.usefixtures("only_explicit_collections")
def test_a_connection_in_a_young_cycle_is_given_back_without_a_full_collection(
    detector: Detector, engine: Engine
) -> None:
    window = detector.begin(reuse=True)
    line = next_line()
    Cycle(engine.connect())
    kept = engine.connect()  # a plain leak: no collection can give it back
    full = full_collections()

    result = detector.finish(window, "t::young_cycle", allow=0, settle=0.05)

    assert sorted(kinds(result)) == [("checked_out", 1), ("gc_return", 1)]
    gc_leak = next(leak for leak in result.leaks if leak.kind == "gc_return")
    assert gc_leak.site is not None
    assert gc_leak.site.line == line
    # Nothing the window made can be in the oldest generation: no full collection ran.
    assert full_collections() == full
    kept.close()


@pytest.mark.no_dbleak  # the session's own gate would see the same dropped connection
@pytest.mark.usefixtures("only_explicit_collections")
def test_a_connection_in_a_cycle_a_collection_aged_still_is_a_gc_return(
    detector: Detector, engine: Engine
) -> None:
    window = detector.begin(reuse=True)
    cycle = Cycle(engine.connect())
    gc.collect(1)  # the cycle, still referenced, moves to the oldest generation
    del cycle

    result = detector.finish(window, "t::aged_cycle", allow=0, settle=0.05)

    assert kinds(result) == [("gc_return", 1)]
    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize(("allow", "failed"), [(1, True), (2, False), (3, False)])
def test_allow_tolerates_that_many_leaked_connections(
    detector: Detector, engine: Engine, allow: int, failed: bool
) -> None:
    window = detector.begin(reuse=True)
    held = [engine.connect(), engine.connect()]

    result = detector.finish(window, "t::allow", allow=allow, settle=0)

    assert kinds(result) == [("checked_out", 2)]  # one line of code: one entry, two connections
    assert (result.leaked, result.allowed, result.failed) == (2, allow, failed)
    for conn in held:
        conn.close()


def test_a_server_row_no_pool_owns_is_a_server_connection_leak(
    detector: Detector, server: SnapshotServer
) -> None:
    server.connect(11)  # before the window: not the test's
    window = detector.begin(reuse=True)
    server.connect(12)
    server.connect(13, user="someone_else")  # not the session's user
    server.connect(14)
    server.disconnect(14)  # came and went during the test

    closed = detector.close(window, "t::server", allow=0, settle=0)
    result = closed.result

    assert kinds(result) == [("server_connection", 1)]
    leak = result.leaks[0]
    assert leak.connection_ids == [12]
    assert [row["id"] for row in leak.processlist] == [12]
    assert leak.processlist[0]["user"] == APP_USER
    assert (result.before.server_connections, result.after.server_connections) == (1, 2)

    detector.reclaim(closed.reclaim)
    # Nobody in this process opened it: its holder cannot be proven gone, so it stays.
    assert server.ended == []
    assert 12 in server.rows


def test_a_transaction_left_open_outside_any_pool_is_the_leak_of_the_test_that_began_it(
    detector: Detector, server: SnapshotServer
) -> None:
    server.connect(21)  # a raw connection of a wider-scoped fixture, idle
    window = detector.begin(reuse=True)
    server.trx[21] = "trx-1"  # the test began a transaction on it and left

    result = detector.finish(window, "t::leaky", allow=0, settle=0)

    assert kinds(result) == [("open_transaction", 1)]
    assert result.leaks[0].connection_ids == [21]


def test_a_transaction_open_while_its_connection_was_still_busy_is_not_the_next_tests(
    detector: Detector, server: SnapshotServer
) -> None:
    server.connect(21)
    server.set_command(21, "Query")  # the reply was read; the server has not said Sleep yet
    server.trx[21] = "trx-1"
    first = detector.begin(reuse=True)
    detector.finish(first, "t::earlier", allow=0, settle=0)  # its last look: still Query
    server.set_command(21, "Sleep")
    window = detector.begin(reuse=True)  # the baseline is that last look

    result = detector.finish(window, "t::clean_twin", allow=0, settle=0)

    assert result.leaks == ()


def test_a_transaction_left_open_as_the_server_finishes_its_last_reply_is_still_the_tests(
    detector: Detector, server: SnapshotServer
) -> None:
    server.connect(21)
    window = detector.begin(reuse=True)
    server.trx[21] = "trx-1"  # began by the test, which returned at once:
    server.busy_for(21, looks=1)  # the end's look still shows its last statement

    result = detector.finish(window, "t::leaky", allow=0, settle=0)

    assert kinds(result) == [("open_transaction", 1)]
    assert result.leaks[0].processlist[0]["command"] == "Sleep"  # the second look's row


def test_a_transaction_whose_connection_stays_busy_is_nobodys_leak(
    detector: Detector, server: SnapshotServer
) -> None:
    server.connect(21)
    window = detector.begin(reuse=True)
    server.trx[21] = "trx-1"
    server.busy_for(21, looks=10_000)  # a statement still running when the test ends

    leaky = detector.finish(window, "t::running", allow=0, settle=0)
    server.set_command(21, "Sleep")
    after = detector.finish(detector.begin(reuse=True), "t::next", allow=0, settle=0)

    assert leaky.leaks == ()  # not idle: nothing left open yet
    assert after.leaks == ()  # and not the next test's either


def test_a_window_whose_listeners_were_cleared_is_judged_on_the_server_only(
    detector: Detector, tracker: Tracker, engine: Engine
) -> None:
    window = detector.begin(reuse=True)
    Pool.dispatch._clear()  # what some suites' teardowns do to SQLAlchemy's registry
    first = engine.connect()  # unseen: no checkout listener any more

    result = detector.finish(window, "t::cleared", allow=0, settle=0)

    # finish() put the listeners back; pool events of this window may be missing, so
    # only the server judges it (and this one shows nothing new).
    assert tracker.lost
    assert tracker.lost_seq >= window.seq
    assert result.leaks == ()
    first.close()

    window = detector.begin(reuse=True)
    line = next_line()
    second = engine.connect()  # seen again
    result = detector.finish(window, "t::after", allow=0, settle=0)
    assert kinds(result) == [("checked_out", 1)]
    site = result.leaks[0].site
    assert site is not None
    assert site.line == line
    second.close()


def test_connections_of_a_mock_dbapi_are_never_leaks(detector: Detector, tracker: Tracker) -> None:
    window = detector.begin(reuse=True)
    pool = QueuePool(mock.MagicMock)  # a suite's fake driver: holds no resource
    held = pool.connect()
    assert tracker.checked_out_count() >= 1  # seen by the tracker...

    result = detector.finish(window, "t::mock", allow=0, settle=0)

    assert result.leaks == ()  # ...but not a leak, checked out or in an undisposed pool
    assert held.dbapi_connection is not None
    assert held.dbapi_connection.mock_calls == []  # the detector never called it
    window = detector.begin(reuse=True)
    del held  # dropped without close(): still nothing held
    assert detector.finish(window, "t::mock_dropped", allow=0, settle=0).leaks == ()
    pool.dispose()
