"""The comparison behind a leak check: what a window left behind, looked at once.

No pytest import. The pool side comes from the Tracker, the server side from the
family's server monitor (its snapshot of client connections); a server connection is a
leak unless a surviving pool that the window did not create explains it as an idle
connection. Each look returns everything it found (``Look``) and keeps none of it: the
Detector decides from successive looks when the verdict is settled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.beyond_pools import BeyondPools
from pytest_dbleak.engine.clientsockets import client_of, client_states
from pytest_dbleak.engine.driver_pools import (
    DriverPoolMisfit,
    PoolTarget,
    handed_out_by,
    pool_connections,
)
from pytest_dbleak.engine.drivers import server_thread_id
from pytest_dbleak.engine.reclaim import detach, dispose, holder_running, rollback
from pytest_dbleak.engine.results import (
    CHECKED_OUT,
    GC_RETURN,
    OPEN_TRANSACTION,
    SERVER_CONNECTION,
    UNDISPOSED_ENGINE,
    Counts,
    Leak,
)
from pytest_dbleak.engine.sites import site_leak
from pytest_dbleak.engine.tracking import ConnState, Frame, Tracker
from pytest_dbleak.engine.window import Window
from pytest_dbleak.families.base import ProcessRow, ServerMonitor, ServerSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Look:
    """One look at a window: its leaks and everything needed to judge and undo them."""

    leaks: list[Leak]
    snap: ServerSnapshot
    late_of: dict[int, str]  # id(leak) -> the earlier test it is blamed on
    undo: tuple[Callable[[], None], ...]  # how to take back the leaks, in their order
    # Server connections whose client socket this machine sees established: open for
    # sure, nothing to wait for.
    client_open: frozenset[int]

    def own(self) -> list[Leak]:
        """The leaks not blamed on an earlier test."""
        return [leak for leak in self.leaks if id(leak) not in self.late_of]

    def settled(self, leak: Leak) -> bool:
        """A server connection whose client socket is established will not go by itself."""
        return (
            leak.kind == SERVER_CONNECTION
            and bool(leak.connection_ids)
            and all(i in self.client_open for i in leak.connection_ids)
        )


class Comparison:
    """Compares the state before and after a window for one session user (or all)."""

    def __init__(
        self, tracker: Tracker, monitor: ServerMonitor, users: frozenset[str] | None, root: Path
    ) -> None:
        self.tracker = tracker
        self.monitor = monitor
        self.users = users
        self.root = root
        self.owned_ids: set[int] = set()  # server connections owned by wider fixtures
        # Providers of the server connections a framework keeps open for reuse by a thread
        # that outlives the test (Django's connections of the main thread): judged like a
        # wider fixture's, never a test's leak. Asked at each look, as they come and go.
        self.kept: list[Callable[[], Iterable[int]]] = []
        self.beyond = BeyondPools(tracker, monitor, users, root)
        self._misfits: set[PoolTarget] = set()  # driver pools whose shape no longer fits

    def look(self, w: Window) -> Look:
        """What `w` left behind now, and how to take each leak back."""
        snap = self.monitor.snapshot()
        tracker = self.tracker
        leaks: list[Leak] = []
        undo: dict[int, Callable[[], None]] = {}  # id(leak) -> how to take it back
        by_conn: dict[int, Leak] = {}  # server id -> the leak that already covers it
        late_of: dict[int, str] = {}  # id(leak) -> the earlier test it is blamed on

        def late(leak: Leak, blamed: str | None) -> Leak:
            if blamed is not None:
                late_of[id(leak)] = blamed
                leak.what += f" (after {blamed} ended, by a thread it started)"
            return leak

        # Instrumentation was put back during this window: pool events may be missing, so
        # what the pools show is unknown. Only the server judges this window.
        partial = tracker.lost_seq >= w.seq
        conns = [] if partial else [c for c in tracker.connections() if _evident(c, snap)]
        self._ask_transactions(w, conns)

        for conn in conns:
            co = conn.checkout
            if co is not None:
                if co.seq >= w.seq and not co.owned:
                    leak = late(
                        self._leak(
                            CHECKED_OUT, 1, _conn_what(conn, "checked out"), co.stack, co.thread
                        ),
                        co.late_for,
                    )
                    leaks.append(self._with_conn(leak, conn, by_conn))
                    undo[id(leak)] = detach(co)
            elif conn.in_trx and conn.checkin_seq >= w.seq and conn.serial not in w.trx_before:
                last = conn.last_checkout
                leak = late(
                    self._leak(
                        OPEN_TRANSACTION,
                        1,
                        _conn_what(conn, _POOL_TRX),
                        last.stack if last else conn.stack,
                        last.thread if last else None,
                    ),
                    last.late_for if last else None,
                )
                leaks.append(self._with_conn(leak, conn, by_conn))
                undo[id(leak)] = rollback(conn)

        gc_returned: set[int] = set()  # id() of ConnStates already counted as gc_return
        for ret in [] if partial else tracker.gc_returns_since(w.seq):
            # A mock DBAPI's connection dropped without close() held nothing.
            if not ret.checkout.owned and ret.conn.real:
                gc_returned.add(id(ret.conn))
                leaks.append(
                    late(
                        self._leak(
                            GC_RETURN,
                            1,
                            _conn_what(
                                ret.conn, "was checked out here and dropped without close()"
                            ),
                            ret.checkout.stack,
                            ret.checkout.thread,
                        ),
                        ret.checkout.late_for,
                    )
                )

        for pool in [] if partial else tracker.pools_created_since(w.seq):
            if pool.owned:
                continue
            # Only connections the server (or SQLite) shows are held: a pool whose close
            # events were missed, or a mock DBAPI's, holds nothing.
            held = [
                c
                for c in pool.open.values()
                if c.checkout is None and not c.in_trx and _evident(c, snap)
            ]
            if not held:
                continue
            # A connection the gc gave back is already one leak: count each connection once.
            counted = [c for c in held if id(c) in gc_returned]
            state = "still alive" if pool.alive else "reclaimed by the garbage collector"
            # "holding" only what is still open (_evident checked it against the
            # snapshot); a connection the collector took was closed by nobody else, and
            # its row, if the server still shows one, is lag.
            holding = [c for c in held if not c.collected]
            by_gc = [c for c in held if c not in holding]
            what = f"{pool.pool_class} {state} without dispose()"
            if holding:
                what += f", holding {_connections(holding)}"
            if by_gc:
                what += (
                    f"{';' if holding else ','} {_connections(by_gc)}"
                    f"{' more' if holding else ''} closed only by the garbage collector"
                )
            if counted:
                what += (
                    " (already counted as gc_return)"
                    if len(counted) == len(held)
                    else f" ({len(counted)} of them already counted as gc_return)"
                )
            leak = late(
                self._leak(
                    UNDISPOSED_ENGINE, len(held) - len(counted), what, pool.stack, pool.thread
                ),
                pool.late_for,
            )
            for conn in held:
                self._with_conn(leak, conn, by_conn)
            leaks.append(leak)
            undo[id(leak)] = dispose(pool)

        # Found beyond the pools, merged here: they cover their server connections too.
        for leak in self.beyond.transaction_leaks(w, snap, by_conn.keys(), self.owned_ids):
            by_conn.update(dict.fromkeys(leak.connection_ids, leak))
            leaks.append(leak)
        leaks.extend(self.beyond.fork_shared_leaks(w.seq))
        pool_leaks, explained = self._driver_pool_leaks(w, by_conn, late)
        leaks.extend(pool_leaks)
        server_leaks, client_open = self._server_leaks(w, snap, by_conn, late, explained)
        leaks.extend(server_leaks)
        for ident, leak in by_conn.items():
            row = snap.rows.get(ident)
            if row is not None and not any(r["id"] == ident for r in leak.processlist):
                leak.processlist.append(row.as_dict())
        return Look(
            leaks,
            snap,
            late_of,
            tuple(undo[id(leak)] for leak in leaks if id(leak) in undo),
            frozenset(client_open),
        )

    def _ask_transactions(self, w: Window, conns: list[ConnState]) -> None:
        """Whether connections given back to a pool that does not reset them still hold
        an implicit transaction, asked of the server from the plugin's own connection
        (never through the user's): only for those given back during the window."""
        ask = {
            c.thread_id: c
            for c in conns
            if c.ask_trx
            and c.checkout is None
            and not c.in_trx
            and c.checkin_seq >= w.seq
            and c.thread_id is not None
        }
        if not ask:
            return
        try:
            found = self.monitor.transactions(set(ask))
        except Exception:  # noqa: BLE001 - an unanswered question is no verdict
            return
        for ident, conn in ask.items():
            if ident in found:
                conn.in_trx = True
            conn.ask_trx = False  # settled: the next checkin asks again

    def _server_leaks(
        self,
        w: Window,
        snap: ServerSnapshot,
        by_conn: dict[int, Leak],
        late: Callable[[Leak, str | None], Leak],
        explained: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[list[Leak], set[int]]:
        """Server connections opened in the window that nothing explains; and those of
        them whose client socket this machine sees established (open for sure)."""
        tracker = self.tracker
        new = snap.ids_of(self.users) - w.server.ids_of(self.users) - self.owned_ids
        for provider in self.kept if new else ():
            new -= set(provider())
        if not new:
            return [], set()
        closing = tracker.closed_since(w.seq)
        lagging, client_open = self._client_closing(snap, new - closing - set(by_conn))
        closing |= lagging
        unexplained: list[ProcessRow] = []
        for ident in sorted(new):
            row = snap.rows[ident]
            if ident in by_conn or ident in explained:
                continue
            if ident in closing:
                continue  # closed by its pool; the server has not caught up yet
            conn = tracker.by_thread_id.get(ident)
            if conn is not None and not conn.collected:
                continue  # idle in a pool that outlives the window
            unexplained.append(row)
        # Drivers that do not reveal the server's connection id: count their idle
        # connections instead, so that a surviving pool still explains its growth.
        anonymous = sum(
            1
            for c in tracker.connections()
            if c.thread_id is None and c.created_seq >= w.seq and c.checkout is None
        )
        leaks = []
        for row in unexplained[anonymous:]:
            opened = tracker.opened_at(row.id)  # a raw driver connection of this process
            stack, thread, owner = (
                (opened.stack, opened.thread, "") if opened else (self.beyond.child_site(row))
            )
            leak = self._leak(
                SERVER_CONNECTION,
                1,
                f"server connection {row.id} ({row.user}@{row.host}, {row.command}) "
                f"opened during the test and still open; no pool of this process owns it{owner}",
                stack,
                thread,
            )
            leak.connection_ids.append(row.id)
            leak.processlist.append(row.as_dict())
            leaks.append(late(leak, opened.late_for if opened else None))
        return leaks, client_open

    def _driver_pool_leaks(
        self, w: Window, by_conn: dict[int, Leak], late: Callable[[Leak, str | None], Leak]
    ) -> tuple[list[Leak], set[int]]:
        """Drivers' own pools are pools: their idle connections are not leaks (a pool of
        wider scope grows), one acquired in the window and not released is a
        checked_out leak at the acquire, a pool created in the window and not closed is
        the test's, like an engine never disposed."""
        leaks: list[Leak] = []
        explained: set[int] = set()
        handouts: list[Any] | None = None
        for dp in list(self.tracker.driver_pools):
            pool = dp.ref()
            if pool is None:
                continue
            try:
                idle, used = pool_connections(pool, dp.target)
            except DriverPoolMisfit as exc:
                if dp.target not in self._misfits:
                    self._misfits.add(dp.target)
                    log.warning("dbleak: %s: its idle connections may read as leaks", exc)
                continue
            if used is None:
                if handouts is None:
                    handouts = self.tracker.handed_out_objects()
                used = handed_out_by(pool, handouts)
            idle_ids = {i for c in idle if (i := server_thread_id(c)) is not None}
            explained |= idle_ids
            for conn in used:
                ident = server_thread_id(conn)
                if ident is None:
                    continue
                explained.add(ident)
                handout = self.tracker.handed_out_since(ident, w.seq)
                if handout is None:
                    continue  # acquired before the window: not this test's
                leak = late(
                    self._leak(
                        CHECKED_OUT,
                        1,
                        f"server connection {ident} of {dp.kind} acquired and never released",
                        handout.stack,
                        handout.thread,
                    ),
                    handout.late_for,
                )
                leak.connection_ids.append(ident)
                by_conn[ident] = leak
                leaks.append(leak)
            if dp.seq >= w.seq and not dp.owned and idle_ids:
                leak = late(
                    self._leak(
                        UNDISPOSED_ENGINE,
                        len(idle_ids),
                        f"{dp.kind} created during the test and never closed, holding "
                        f"{len(idle_ids)} idle server connection{'s' if len(idle_ids) > 1 else ''}",
                        dp.stack,
                        dp.thread,
                    ),
                    dp.late_for,
                )
                for ident in sorted(idle_ids):
                    leak.connection_ids.append(ident)
                    by_conn[ident] = leak
                leaks.append(leak)
        return leaks, explained

    def _client_closing(self, snap: ServerSnapshot, ids: set[int]) -> tuple[set[int], set[int]]:
        """Of the server connections `ids`, those whose client on this machine has let go
        already (a row that lags behind its close): settled by the kernel's socket table,
        not by waiting for the row to go; and those whose client socket is established
        (open for sure)."""
        endpoint = self.monitor.endpoint
        if not ids or not endpoint.is_local:
            return set(), set()
        clients = {i: client_of(snap.rows[i].host) for i in ids}
        states = client_states({c for c in clients.values() if c is not None}, endpoint.port)
        closing, client_open = set(), set()
        for ident, client in clients.items():
            state = states.get(client) if client is not None else None
            if state is False:
                closing.add(ident)
            elif state is True:
                client_open.add(ident)
        return closing, client_open

    def gc_may_return(self, leak: Leak) -> bool:
        if leak.kind == SERVER_CONNECTION and any(
            self.tracker.opened_at(i) is None for i in leak.connection_ids
        ):
            return False  # not opened by this process: no collection here closes it
        return leak.kind in (CHECKED_OUT, SERVER_CONNECTION) and not holder_running(leak.thread)

    def _leak(
        self, kind: str, count: int, what: str, stack: tuple[Frame, ...], thread: str | None
    ) -> Leak:
        return site_leak(kind, count, what, stack, thread, self.root)

    @staticmethod
    def _with_conn(leak: Leak, conn: ConnState, by_conn: dict[int, Leak]) -> Leak:
        if conn.thread_id is not None:
            leak.connection_ids.append(conn.thread_id)
            by_conn[conn.thread_id] = leak
        return leak

    def describe_transactions(self, leaks: list[Leak]) -> None:
        """Only on the failure path: when each open transaction began, on the leak's
        server rows; and for a transaction left open in a pool, what it holds (row locks,
        rows modified, the tables it keeps locked where the server tells) on its line."""
        ids = {i for leak in leaks for i in leak.connection_ids}
        try:
            found = self.monitor.transactions(ids)
        except Exception:  # noqa: BLE001 - a description must never turn into an error
            return
        for leak in leaks:
            for row in leak.processlist:
                info = found.get(row["id"])
                row["trx_started"] = info.started if info is not None else None
            if leak.kind == OPEN_TRANSACTION and _POOL_TRX in leak.what:
                infos = [found[i] for i in leak.connection_ids if i in found]
                if len(infos) == 1:
                    leak.what = leak.what.replace(_POOL_TRX, f"{_POOL_TRX} ({infos[0].describe()})")

    def counts(self, snap: ServerSnapshot, checked_out: int) -> Counts:
        return Counts(len(snap.ids_of(self.users)), snap.threads_connected, checked_out)


_POOL_TRX = "idle in a pool inside a transaction"


def _evident(conn: ConnState, snap: ServerSnapshot) -> bool:
    """Whether a tracked connection is a real resource now: a real driver's connection
    whose server connection is in the snapshot, or one with no server id (SQLite). A
    connection of a mock DBAPI never is; one whose id the server no longer lists was
    closed (events of its close may have been lost), unless the garbage collector took
    it (a connection closed by nobody but the collector is a leak)."""
    if not conn.real:
        return False
    # Collected without a close event: closed by the garbage collector only - a leak
    # whether or not the server has noticed yet.
    return conn.thread_id is None or conn.collected or conn.thread_id in snap.rows


def _connections(conns: list[ConnState]) -> str:
    """'2 server connections' - or '2 connections' where there is no server (SQLite)."""
    server = "server " if all(c.thread_id is not None for c in conns) else ""
    return f"{len(conns)} {server}connection{'s' if len(conns) != 1 else ''}"


def _conn_what(conn: ConnState, state: str) -> str:
    ident = f"server connection {conn.thread_id}" if conn.thread_id is not None else "connection"
    return f"{ident} of {conn.pool.pool_class} {state}"
