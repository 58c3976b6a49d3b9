"""The tracker in process, on real SQLAlchemy pools over SQLite files: what it records of
pools and connections, in sequence order, and what it puts back when a suite clears
SQLAlchemy's listeners. No server, no pytester."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import Pool, QueuePool

from pytest_dbleak.engine import _sqla_seam as seam
from pytest_dbleak.engine.tracking import Tracker
from tests.unit.doubles import next_line


def sqlite_pool(path: Path) -> QueuePool:
    return QueuePool(lambda: sqlite3.connect(path, check_same_thread=False))


def test_a_pool_created_after_a_mark_is_recorded_with_its_line(
    tracker: Tracker, tmp_path: Path
) -> None:
    before = sqlite_pool(tmp_path / "before.db")
    mark = tracker.mark()
    line = next_line()
    pool = sqlite_pool(tmp_path / "after.db")

    state = tracker.states[pool]
    assert state.created_seq >= mark
    assert state.pool_class == "QueuePool"
    assert any(frame[1] == line and frame[0] == __file__ for frame in state.stack)
    assert [s.pool_class for s in tracker.pools_created_since(mark)] == ["QueuePool"]
    assert next(iter(tracker.pools_created_since(mark))) is state
    assert tracker.states[before].created_seq < mark
    pool.dispose()
    before.dispose()


def test_checkout_checkin_and_close_are_recorded_in_order(tracker: Tracker, tmp_path: Path) -> None:
    pool = sqlite_pool(tmp_path / "a.db")
    mark = tracker.mark()
    line = next_line()
    proxy = pool.connect()

    [conn] = tracker.states[pool].open.values()
    assert conn.real
    assert conn.thread_id is None
    assert conn.checkout is not None
    assert conn.checkout.seq >= mark
    assert any(frame[1] == line for frame in conn.checkout.stack)
    assert tracker.checked_out_count() == 1

    proxy.close()
    assert conn.checkout is None
    assert conn.last_checkout is not None
    assert conn.checkin_seq > conn.last_checkout.seq
    assert tracker.checked_out_count() == 0
    assert conn in tracker.connections()  # idle in its pool, still open

    pool.dispose()  # closes it: the tracker forgets it
    assert tracker.states[pool].open == {}
    assert conn not in tracker.connections()


@pytest.mark.no_dbleak  # the session's own gate would see the same dropped connection
def test_a_connection_dropped_without_close_is_a_gc_return(
    tracker: Tracker, tmp_path: Path
) -> None:
    pool = sqlite_pool(tmp_path / "a.db")
    mark = tracker.mark()
    proxy = pool.connect()
    closed = pool.connect()
    closed.close()  # given back by close(): not a gc return
    del proxy

    [ret] = tracker.gc_returns_since(mark)
    assert ret.checkout.seq >= mark
    assert ret.seq > ret.checkout.seq
    assert ret.conn.checkout is None
    assert tracker.gc_returns_since(tracker.mark()) == []
    pool.dispose()


def test_a_wider_fixtures_pool_is_owned(tracker: Tracker, tmp_path: Path) -> None:
    tracker.push_owner()
    try:
        owned = sqlite_pool(tmp_path / "owned.db")
    finally:
        tracker.pop_owner()
    mine = sqlite_pool(tmp_path / "mine.db")
    assert (tracker.states[owned].owned, tracker.states[mine].owned) == (True, False)
    owned.dispose()
    mine.dispose()


def test_engine_dispose_recreates_a_pool_that_keeps_its_engines_origin(
    tracker: Tracker, tmp_path: Path
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}", poolclass=QueuePool)
    first = tracker.states[engine.pool]
    for _ in range(3):
        with engine.connect():
            pass
        engine.dispose()
    recreated = tracker.states[engine.pool]
    assert recreated is not first
    assert (recreated.created_seq, recreated.stack) == (first.created_seq, first.stack)
    # One connect listener serves the pool however often it was recreated.
    assert recreated.listener is first.listener
    with engine.connect():
        assert len(recreated.open) == 1
    engine.dispose()


def test_verify_puts_back_listeners_a_suite_cleared(tracker: Tracker, tmp_path: Path) -> None:
    mark = tracker.mark()
    assert tracker.verify() is False  # nothing missing yet
    Pool.dispatch._clear()
    assert not seam.has_pool_class("checkout", tracker._on_checkout)

    assert tracker.verify() is True
    assert tracker.lost_seq >= mark
    assert sorted(tracker.lost) == sorted(f"Pool {n} listener" for n in seam.CLASS_EVENTS)
    assert all(seam.has_pool_class(n, getattr(tracker, f"_on_{n}")) for n in seam.CLASS_EVENTS)
    assert tracker.verify() is False

    pool = sqlite_pool(tmp_path / "a.db")
    proxy = pool.connect()
    assert tracker.checked_out_count() == 1  # events arrive again
    proxy.close()
    pool.dispose()


def test_a_mock_dbapi_connection_is_tracked_but_not_real(tracker: Tracker) -> None:
    pool = QueuePool(mock.MagicMock)
    proxy = pool.connect()
    [conn] = tracker.states[pool].open.values()
    assert (conn.real, conn.thread_id) == (False, None)
    assert proxy.dbapi_connection is not None
    assert proxy.dbapi_connection.mock_calls == []  # read without a call
    proxy.close()
    pool.dispose()


def test_after_uninstall_nothing_is_recorded(tmp_path: Path) -> None:
    t = Tracker()
    t.install()
    t.uninstall()
    pool = sqlite_pool(tmp_path / "a.db")
    proxy = pool.connect()
    assert pool not in t.states
    assert t.checked_out_count() == 0
    proxy.close()
    pool.dispose()


@pytest.mark.parametrize("pool_class", [sa.pool.NullPool, sa.pool.StaticPool])
def test_pool_classes_without_a_checkout_counter_are_tracked(
    tracker: Tracker, tmp_path: Path, pool_class: type[Pool]
) -> None:
    pool = pool_class(lambda: sqlite3.connect(tmp_path / "a.db", check_same_thread=False))
    proxy = pool.connect()
    assert tracker.checked_out_count() == 1
    proxy.close()
    assert tracker.checked_out_count() == 0
    pool.dispose()
