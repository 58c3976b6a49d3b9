"""Taking back what a test leaked, after its result was reported. No pytest import.

The Detector's look at a window says how each leak could be taken back (``detach``,
``rollback``, ``dispose``); ``Detector.close`` hands those, with the server connections
the result names, to the caller as one ``Reclaim`` value, used only when the leak fails
its test. Nothing here reads state a previous look left behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pytest_dbleak.engine.tracking import Checkout, ConnState, Opened, PoolState, Tracker
from pytest_dbleak.families.base import ServerMonitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reclaim:
    """How to take back the leaks of one result without ever harming their holder, so
    that later tests start from a healthy pool and a clean test that passes without the
    plugin passes with it:

    - a checked-out pooled connection is detached from its pool: the pool's slot is
      free again, the holder keeps a working connection (closed for real when it is
      closed);
    - a transaction left open on a connection idle in a pool is rolled back (the pool
      owns that connection, nobody else);
    - an engine never disposed is disposed (its holder still gets new connections);
    - a server connection no pool owns (`server_ids`) is killed only once its holder is
      gone: the driver's connection object was collected, or, when it cannot be
      watched, the thread that opened it has ended. One still referenced (a framework's
      per-thread connection kept for reuse) is never touched; if it blocks others, the
      lock watch ends it then.
    """

    undo: tuple[Callable[[], None], ...] = ()
    server_ids: tuple[int, ...] = ()

    def run(self, tracker: Tracker, monitor: ServerMonitor) -> None:
        for action in self.undo:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the leaked object may be in any state
                log.debug("dbleak: could not take a leak back: %s", exc)
        for ident in sorted(set(self.server_ids)):
            opened = tracker.opened_at(ident)
            if opened is None or not holder_gone(opened):
                continue
            try:
                monitor.end_connection(ident)
            except Exception:  # noqa: BLE001 - it may have gone by itself meanwhile
                continue


def detach(checkout: Checkout) -> Callable[[], None]:
    def undo() -> None:
        fairy = checkout.fairy() if checkout.fairy is not None else None
        if fairy is not None and fairy.dbapi_connection is not None:
            # Pool bookkeeping only, no statement: the pool gets its slot back and the
            # holder keeps a working connection, closed for real when it is closed.
            # (SQLAlchemy documents PoolProxiedConnection.detach() for this.)
            fairy.detach()

    return undo


def holder_gone(opened: Opened) -> bool:
    """Whether nobody can use a raw connection any more: its object was collected, or,
    for a driver whose connections cannot be watched, the thread that opened it ended."""
    if opened.ref is not None:
        return opened.ref() is None
    return not holder_running(opened.thread)


def rollback(conn: ConnState) -> Callable[[], None]:
    def undo() -> None:
        dbapi = conn.ref() if conn.ref is not None else None
        if dbapi is not None and conn.checkout is None:
            dbapi.rollback()
            conn.in_trx = False

    return undo


def dispose(pool: PoolState) -> Callable[[], None]:
    def undo() -> None:
        target = pool.ref()
        if target is not None:
            target.dispose()

    return undo


def holder_running(thread: str | None) -> bool:
    """Whether a thread of that name, other than this one, still runs: it may still give
    back what it holds. Names are not unique, so a namesake counts as running - the
    safe side: the leak is re-checked as it always was."""
    if thread is None:
        return False
    current = threading.current_thread()
    return any(t.name == thread for t in threading.enumerate() if t is not current)
