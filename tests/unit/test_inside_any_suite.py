"""The tracker survives what a test suite does to SQLAlchemy, and never touches what it
observes (the acceptance side is tests/acceptance/test_inside_any_suite.py)."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import Pool, QueuePool

from pytest_dbleak.engine import _sqla_seam as seam
from pytest_dbleak.engine.clientsockets import Client, client_of, client_states
from pytest_dbleak.engine.drivers import in_transaction, is_real_connection, server_thread_id
from pytest_dbleak.engine.tracking import Tracker


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    t.install()
    yield t
    t.uninstall()


def test_a_mock_connection_is_read_without_a_call_and_holds_nothing() -> None:
    for conn in (mock.Mock(), mock.MagicMock()):
        assert server_thread_id(conn) is None
        assert in_transaction(conn) is None
        assert not is_real_connection(conn)
        assert conn.mock_calls == []


def test_sqlite_connections_are_real_resources_without_a_server_id() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        assert is_real_connection(conn)
        assert server_thread_id(conn) is None
    finally:
        conn.close()


def test_cleared_pool_listeners_are_put_back_and_the_loss_is_marked(tracker: Tracker) -> None:
    before = tracker.mark()
    assert tracker.lost_seq < before
    Pool.dispatch._clear()
    assert not seam.has_pool_class("checkout", tracker._on_checkout)

    assert tracker.verify() is True
    assert tracker.lost_seq >= before
    assert all(seam.has_pool_class(n, getattr(tracker, f"_on_{n}")) for n in seam.CLASS_EVENTS)
    assert tracker.verify() is False  # nothing missing any more

    pool = QueuePool(lambda: sqlite3.connect(":memory:"))
    proxy = pool.connect()
    assert tracker.checked_out_count() == 1  # events arrive again
    proxy.close()
    pool.dispose()


def test_a_removed_connect_listener_is_noticed_at_the_next_checkout(tracker: Tracker) -> None:
    pool = QueuePool(lambda: sqlite3.connect(":memory:"))
    state = tracker.states[pool]
    event.remove(pool, "connect", state.listener)
    mark = tracker.mark()

    proxy = pool.connect()
    assert tracker.lost_seq >= mark
    assert seam.has_connect(pool, state.listener)
    assert [c.pool for c in state.open.values()] == [state]
    proxy.close()
    pool.dispose()


def test_uninstall_tolerates_listeners_the_suite_took_away() -> None:
    t = Tracker()
    t.install()
    Pool.dispatch._clear()
    t.uninstall()  # no InvalidRequestError: No listeners found


def test_nothing_listens_on_the_engine_class(tracker: Tracker) -> None:
    engine = sa.create_engine("sqlite://")
    assert not engine._has_events
    with engine.connect():
        pass
    engine.dispose()
    origin = tracker.states[engine.pool].origin  # the recreated pool knows its engine's
    assert origin is not None


def test_a_client_socket_is_established_while_open_and_closing_once_let_go() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    local = client.getsockname()[1]
    try:
        mine = client_of(f"127.0.0.1:{local}")
        assert mine == Client("127.0.0.1", local)
        # A port proxy's outgoing connection can carry the number of a port of ours:
        # the server lists the proxy's address, and our socket is not its client.
        proxied = Client("172.17.0.1", local)
        assert client_states({mine, proxied}, port) == {mine: True}
        client.close()  # the peer has not closed yet: the client end is closing
        assert client_states({mine, proxied}, port) == {mine: False}
        assert client_states({Client(None, local)}, port) == {Client(None, local): False}
    finally:
        accepted.close()
        server.close()
