"""Compares the state before and after a window and names what was left behind.

No pytest import. The pool side comes from the Tracker, the server side from the
Monitor's processlist; a server connection is a leak unless a surviving pool that the
window did not create explains it as an idle connection.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .beyond_pools import BeyondPools
from .clientsockets import client_port, client_states
from .probe import Monitor, ProcessRow, ServerSnapshot
from .results import (
    CHECKED_OUT,
    GC_RETURN,
    KINDS,
    OPEN_TRANSACTION,
    SERVER_CONNECTION,
    UNDISPOSED_ENGINE,
    CheckResult,
    Counts,
    Leak,
)
from .sites import user_sites
from .tracking import Checkout, ConnState, Frame, PoolState, Tracker
from .window import Window


class Detector:
    """Runs leak checks against one server for one session user (or all users)."""

    def __init__(
        self, tracker: Tracker, monitor: Monitor, users: frozenset[str] | None, root: Path
    ) -> None:
        self.tracker = tracker
        self.monitor = monitor
        self.users = users
        self.root = root
        self.owned_ids: set[int] = set()  # server connections owned by wider fixtures
        self.beyond = BeyondPools(
            tracker, monitor, users, self._leak, lambda stack: user_sites(stack, root)
        )
        self._last: ServerSnapshot | None = None
        # Server connections whose client socket this machine sees established: open for
        # sure, nothing to wait for (see _server_leaks).
        self._client_open: set[int] = set()
        # How to take back each leak of the last collection, with the server connections
        # it holds: see reclaim().
        self._undo: list[tuple[list[int], Callable[[], None]]] = []

    # -- windows -----------------------------------------------------------------
    def begin(self, *, reuse: bool = False) -> Window:
        """Open a window. With reuse, the previous check's final snapshot is the baseline:
        nothing but pytest's own bookkeeping runs between two tests."""
        seq = self.tracker.mark()
        server = self._last if (reuse and self._last is not None) else self.monitor.snapshot()
        return Window(
            seq,
            server,
            self.tracker.idle_in_transaction(),
            self.tracker.checked_out_count(),
            server_trx=self.beyond.transactions_before(server),
        )

    def finish(
        self, window: Window, nodeid: str, *, allow: int, settle: float, patient: bool = False
    ) -> CheckResult:
        """The verdict of `window`. `patient`: re-check every suspicion for up to `settle`
        (the test asked for its settle time), not only those that can still change."""
        started = time.monotonic()
        # Somebody may have removed listeners during the test (a teardown calling
        # Pool.dispatch._clear()): put them back, and judge this window on the server only.
        self.tracker.verify()
        leaks, snap = self._collect(window)
        rechecked = False
        # A connection nobody references any more but a reference cycle: a collection
        # gives it back now, rather than some later test's. The young generations first
        # (what the test just made lives there, and they cost microseconds); the full
        # collection, which costs a large process a tenth of a second, only for a
        # suspicion that outlived them.
        for generation in (1, 2):
            if not (leaks and settle > 0 and any(self._gc_may_return(leak) for leak in leaks)):
                break
            rechecked = True
            gc.collect(generation)
            leaks, snap = self._collect(window)
        delay = 0.01
        # Re-check only what can still change - a server row whose client this machine
        # cannot see close, a connection held by a thread that is still running - with
        # backoff, for at most `settle`. A leak whose holder is gone is judged at once.
        while leaks and (
            patient
            or _started_threads_running(window)
            or any(_may_change(leak) and not self._settled(leak) for leak in leaks)
        ):
            left = settle - (time.monotonic() - started)
            if left <= 0:
                break
            rechecked = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)  # notice a suspicion clearing within 50 ms
            leaks, snap = self._collect(window)
        # The time spent judging a suspicion, also when it cleared: 0 only for a test that
        # was clean at the first look.
        waited = time.monotonic() - started if rechecked else 0.0
        self._last = snap
        if leaks:
            self._describe_transactions(leaks)
        self.tracker.prune()
        return CheckResult(
            nodeid=nodeid,
            leaks=sorted(leaks, key=lambda leak: KINDS.index(leak.kind)),
            allowed=allow,
            before=self._counts(window.server, window.checked_out),
            after=self._counts(snap, self.tracker.checked_out_count()),
            waited=round(waited, 4),
        )

    def reclaim(self, result: CheckResult) -> None:
        """Take back what `result` leaked, so later tests start from a healthy pool and
        server: checked-out connections invalidated (which returns them to their pool),
        open transactions rolled back, undisposed engines disposed, and server
        connections of the session's user that no pool owns killed."""
        kill = {
            i
            for leak in result.leaks
            if leak.kind == SERVER_CONNECTION
            for i in leak.connection_ids
        }
        for ids, action in self._undo:  # the last collection: the one `result` came from
            try:
                action()
            except Exception:  # noqa: BLE001 - the leaked object may be in any state
                kill.update(ids)
        self._undo = []
        for ident in sorted(kill):
            try:
                self.monitor.query(f"KILL CONNECTION {int(ident)}")
            except Exception:  # noqa: BLE001 - it may have gone by itself meanwhile
                continue
        self._last = None  # the next window starts from what is left now

    def forget_baseline(self) -> None:
        """The next window takes a fresh snapshot: an unchecked test ran in between."""
        self._last = None

    def note_owned_server_connections(self, before: ServerSnapshot) -> None:
        """Connections that appeared while a wider-scoped fixture was set up are its own."""
        after = self.monitor.snapshot()
        self.owned_ids |= after.ids_of(self.users) - before.ids_of(self.users)
        self.beyond.note_owned_transactions(after)
        self._last = after

    def snapshot(self) -> ServerSnapshot:
        return self.monitor.snapshot()

    # -- the comparison ------------------------------------------------------------
    def _collect(self, w: Window) -> tuple[list[Leak], ServerSnapshot]:
        snap = self.monitor.snapshot()
        tracker = self.tracker
        leaks: list[Leak] = []
        undo: dict[int, Callable[[], None]] = {}  # id(leak) -> how to take it back
        by_conn: dict[int, Leak] = {}  # server id -> the leak that already covers it
        # Instrumentation was put back during this window: pool events may be missing, so
        # what the pools show is unknown. Only the server judges this window.
        partial = tracker.lost_seq >= w.seq
        conns = [] if partial else [c for c in tracker.connections() if _evident(c, snap)]
        self._ask_transactions(w, conns)

        for conn in conns:
            co = conn.checkout
            if co is not None:
                if co.seq >= w.seq and not co.owned:
                    leak = self._leak(
                        CHECKED_OUT, 1, _conn_what(conn, "checked out"), co.stack, co.thread
                    )
                    leaks.append(self._with_conn(leak, conn, by_conn))
                    undo[id(leak)] = _invalidate(co)
            elif conn.in_trx and conn.checkin_seq >= w.seq and conn.serial not in w.trx_before:
                last = conn.last_checkout
                leak = self._leak(
                    OPEN_TRANSACTION,
                    1,
                    _conn_what(conn, "idle in a pool inside a transaction"),
                    last.stack if last else conn.stack,
                    last.thread if last else None,
                )
                leaks.append(self._with_conn(leak, conn, by_conn))
                undo[id(leak)] = _rollback(conn)

        gc_returned: set[int] = set()  # id() of ConnStates already counted as gc_return
        for ret in [] if partial else tracker.gc_returns_since(w.seq):
            # A mock DBAPI's connection dropped without close() held nothing.
            if not ret.checkout.owned and ret.conn.real:
                gc_returned.add(id(ret.conn))
                leaks.append(
                    self._leak(
                        GC_RETURN,
                        1,
                        _conn_what(ret.conn, "was checked out here and dropped without close()"),
                        ret.checkout.stack,
                        ret.checkout.thread,
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
            leak = self._leak(
                UNDISPOSED_ENGINE, len(held) - len(counted), what, pool.stack, pool.thread
            )
            for conn in held:
                self._with_conn(leak, conn, by_conn)
            leaks.append(leak)
            undo[id(leak)] = _dispose(pool)

        leaks.extend(self.beyond.transaction_leaks(w, snap, by_conn, self.owned_ids))
        leaks.extend(self.beyond.fork_shared_leaks(w.seq))
        leaks.extend(self._server_leaks(w, snap, by_conn))
        self._undo = [(leak.connection_ids, undo[id(leak)]) for leak in leaks if id(leak) in undo]
        for ident, leak in by_conn.items():
            row = snap.rows.get(ident)
            if row is not None and not any(r["id"] == ident for r in leak.processlist):
                leak.processlist.append(row.as_dict())
        return leaks, snap

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
        self, w: Window, snap: ServerSnapshot, by_conn: dict[int, Leak]
    ) -> list[Leak]:
        tracker = self.tracker
        self._client_open = set()
        new = snap.ids_of(self.users) - w.server.ids_of(self.users) - self.owned_ids
        if not new:
            return []
        closing = tracker.closed_since(w.seq)
        closing |= self._client_closing(snap, new - closing - set(by_conn))
        unexplained: list[ProcessRow] = []
        for ident in sorted(new):
            row = snap.rows[ident]
            if ident in by_conn:
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
            leaks.append(leak)
        return leaks

    def _client_closing(self, snap: ServerSnapshot, ids: set[int]) -> set[int]:
        """Of the server connections `ids`, those whose client on this machine has let go
        already (a row that lags behind its close): settled by the kernel's socket table,
        not by waiting for the row to go. Those whose client socket is established are
        noted as open for sure."""
        self._client_open = set()
        endpoint = self.monitor.endpoint
        if not ids or not endpoint.is_local:
            return set()
        ports = {i: client_port(snap.rows[i].host) for i in ids}
        states = client_states({p for p in ports.values() if p is not None}, endpoint.port)
        closing = set()
        for ident, port in ports.items():
            state = states.get(port) if port is not None else None
            if state is False:
                closing.add(ident)
            elif state is True:
                self._client_open.add(ident)
        return closing

    def _gc_may_return(self, leak: Leak) -> bool:
        if leak.kind == SERVER_CONNECTION and any(
            self.tracker.opened_at(i) is None for i in leak.connection_ids
        ):
            return False  # not opened by this process: no collection here closes it
        return leak.kind in (CHECKED_OUT, SERVER_CONNECTION) and not _holder_running(leak.thread)

    def _settled(self, leak: Leak) -> bool:
        """A server connection whose client socket is established will not go by itself."""
        return (
            leak.kind == SERVER_CONNECTION
            and bool(leak.connection_ids)
            and all(i in self._client_open for i in leak.connection_ids)
        )

    def _leak(
        self, kind: str, count: int, what: str, stack: tuple[Frame, ...], thread: str | None
    ) -> Leak:
        sites = user_sites(stack, self.root)
        return Leak(
            kind, count, what, site=sites[-1] if sites else None, stack=sites, thread=thread
        )

    @staticmethod
    def _with_conn(leak: Leak, conn: ConnState, by_conn: dict[int, Leak]) -> Leak:
        if conn.thread_id is not None:
            leak.connection_ids.append(conn.thread_id)
            by_conn[conn.thread_id] = leak
        return leak

    def _describe_transactions(self, leaks: list[Leak]) -> None:
        # Only on the failure path: INNODB_TRX adds when each open transaction began.
        ids = {i for leak in leaks for i in leak.connection_ids}
        try:
            started = self.monitor.open_transactions(ids)
        except Exception:  # noqa: BLE001 - a description must never turn into an error
            return
        for leak in leaks:
            for row in leak.processlist:
                row["trx_started"] = started.get(row["id"])

    def _counts(self, snap: ServerSnapshot, checked_out: int) -> Counts:
        return Counts(len(snap.ids_of(self.users)), snap.threads_connected, checked_out)


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


def _invalidate(checkout: Checkout) -> Callable[[], None]:
    def undo() -> None:
        fairy = checkout.fairy() if checkout.fairy is not None else None
        if fairy is not None and fairy.dbapi_connection is not None:
            fairy.invalidate()  # closes it and gives the pool its slot back

    return undo


def _rollback(conn: ConnState) -> Callable[[], None]:
    def undo() -> None:
        dbapi = conn.ref() if conn.ref is not None else None
        if dbapi is not None and conn.checkout is None:
            dbapi.rollback()
            conn.in_trx = False

    return undo


def _dispose(pool: PoolState) -> Callable[[], None]:
    def undo() -> None:
        target = pool.ref()
        if target is not None:
            target.dispose()

    return undo


def _holder_running(thread: str | None) -> bool:
    """Whether a thread of that name, other than this one, still runs: it may still give
    back what it holds. Names are not unique, so a namesake counts as running - the
    safe side: the leak is re-checked as it always was."""
    if thread is None:
        return False
    current = threading.current_thread()
    return any(t.name == thread for t in threading.enumerate() if t is not current)


def _started_threads_running(window: Window) -> bool:
    current = threading.current_thread()
    return any(t.ident not in window.threads for t in threading.enumerate() if t is not current)


def _may_change(leak: Leak) -> bool:
    if leak.kind == GC_RETURN:
        return False  # it happened
    if leak.kind == SERVER_CONNECTION and not leak.stack and leak.thread is None:
        return True  # opened by nobody this process saw: may be a close the server lags on
    return _holder_running(leak.thread)


def _connections(conns: list[ConnState]) -> str:
    """'2 server connections' - or '2 connections' where there is no server (SQLite)."""
    server = "server " if all(c.thread_id is not None for c in conns) else ""
    return f"{len(conns)} {server}connection{'s' if len(conns) != 1 else ''}"


def _conn_what(conn: ConnState, state: str) -> str:
    ident = f"server connection {conn.thread_id}" if conn.thread_id is not None else "connection"
    return f"{ident} of {conn.pool.pool_class} {state}"
