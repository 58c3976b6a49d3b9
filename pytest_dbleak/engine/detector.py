"""Compares the state before and after a window and names what was left behind.

No pytest import. The pool side comes from the Tracker, the server side from the
family's server monitor (its snapshot of client connections); a server connection is a
leak unless a surviving pool that the window did not create explains it as an idle
connection.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.beyond_pools import BeyondPools
from pytest_dbleak.engine.clientsockets import client_port, client_states
from pytest_dbleak.engine.drivers import (
    DriverPoolMisfit,
    PoolTarget,
    handed_out_by,
    pool_connections,
    server_thread_id,
)
from pytest_dbleak.engine.results import (
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
from pytest_dbleak.engine.sites import user_sites
from pytest_dbleak.engine.tracking import Checkout, ConnState, Frame, Opened, PoolState, Tracker
from pytest_dbleak.engine.window import Window
from pytest_dbleak.families.base import ProcessRow, ServerMonitor, ServerSnapshot

log = logging.getLogger(__name__)


class Detector:
    """Runs leak checks against one server for one session user (or all users)."""

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
        self.beyond = BeyondPools(
            tracker, monitor, users, self._leak, lambda stack: user_sites(stack, root)
        )
        self._last: ServerSnapshot | None = None
        # Server connections whose client socket this machine sees established: open for
        # sure, nothing to wait for (see _server_leaks).
        self._client_open: set[int] = set()
        # How to take back each leak of the last collection, with the server connections
        # it holds: see reclaim().
        self._undo: list[Callable[[], None]] = []
        # Leaks of threads that outlived the test that started them: (that test, leak).
        self.late: list[tuple[str, Leak]] = []
        self._late_of: dict[int, str] = {}  # id(leak) -> nodeid, for the last collection
        self._after: tuple[int, ServerSnapshot] | None = None  # the last window's end
        self._misfits: set[PoolTarget] = set()  # driver pools whose shape no longer fits

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
            if not (settle > 0 and any(self._gc_may_return(leak) for leak in self._own(leaks))):
                break
            rechecked = True
            gc.collect(generation)
            leaks, snap = self._collect(window)
        delay = 0.01
        threads = self.tracker.threads
        # Re-check only what can still change - a server row whose client this machine
        # cannot see close, a connection held by a thread that is still running - with
        # backoff, for at most `settle`. A leak whose holder is gone is judged at once. A
        # thread the test started and that still runs is the test's: it is waited for,
        # leak or not, so that what it opens is judged here rather than blamed on a later
        # test.
        while (
            (own := self._own(leaks))
            and (
                patient
                or _started_threads_running(window)
                or any(_may_change(leak) and not self._settled(leak) for leak in own)
            )
        ) or threads.running_since(window.seq):
            left = settle - (time.monotonic() - started)
            if left <= 0:
                break
            rechecked = True
            if own:
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)  # notice a suspicion clearing within 50 ms
            else:
                # Nothing suspected: only threads the test started still run. Their end is
                # the event to await, not the server's next answer.
                for thread in threads.running_since(window.seq):
                    thread.join(max(0.0, settle - (time.monotonic() - started)))
            leaks, snap = self._collect(window)
        # Still running after the settle time: what they open from now on is this test's.
        threads.blame(threads.running_since(window.seq), nodeid)
        late = [leak for leak in leaks if id(leak) in self._late_of]
        self.late.extend((self._late_of[id(leak)], leak) for leak in late)
        leaks = [leak for leak in leaks if id(leak) not in self._late_of]
        # The time spent judging a suspicion, also when it cleared: 0 only for a test that
        # was clean at the first look.
        waited = time.monotonic() - started if rechecked else 0.0
        self._last = snap
        self._after = (self.tracker.mark(), snap)
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
        """Take back what `result` leaked without ever harming its holder, so that later
        tests start from a healthy pool and a clean test that passes without the plugin
        passes with it:

        - a checked-out pooled connection is detached from its pool: the pool's slot is
          free again, the holder keeps a working connection (closed for real when it is
          closed);
        - a transaction left open on a connection idle in a pool is rolled back (the pool
          owns that connection, nobody else);
        - an engine never disposed is disposed (its holder still gets new connections);
        - a server connection no pool owns is killed only once its holder is gone: the
          driver's connection object was collected, or, when it cannot be watched, the
          thread that opened it has ended. One still referenced (a framework's
          per-thread connection kept for reuse) is never touched; if it blocks others,
          the lock watch ends it then.
        """
        for action in self._undo:  # the last collection: the one `result` came from
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the leaked object may be in any state
                log.debug("dbleak: could not take a leak back: %s", exc)
        self._undo = []
        reported = {
            i
            for leak in result.leaks
            if leak.kind == SERVER_CONNECTION
            for i in leak.connection_ids
        }
        for ident in sorted(reported):
            opened = self.tracker.opened_at(ident)
            if opened is None or not _holder_gone(opened):
                continue
            try:
                self.monitor.end_connection(ident)
            except Exception:  # noqa: BLE001 - it may have gone by itself meanwhile
                continue
        self._last = None  # the next window starts from what is left now

    def _own(self, leaks: list[Leak]) -> list[Leak]:
        """`leaks` without those blamed on an earlier test (see take_late)."""
        return [leak for leak in leaks if id(leak) not in self._late_of]

    def take_late(self) -> list[tuple[str, Leak]]:
        """Leaks found since the last call that belong to an earlier test, whose thread
        opened them after its window closed."""
        late, self.late = self.late, []
        return late

    def late_at_end(self, settle: float) -> list[tuple[str, Leak]]:
        """After the last test: wait up to `settle` for threads that outlived their test,
        then judge what they opened since the last window closed."""
        threads = self.tracker.threads
        deadline = time.monotonic() + settle
        while (running := [t for t in list(threads.late) if t.is_alive()]) and (
            left := deadline - time.monotonic()
        ) > 0:
            running[0].join(left)
        if self._after is not None and threads.late:
            seq, snap = self._after
            leaks, _ = self._collect(Window(seq, snap, set(), 0, server_trx=None))
            self.late.extend(
                (self._late_of[id(leak)], leak) for leak in leaks if id(leak) in self._late_of
            )
            self._undo = []
        return self.take_late()

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
                    undo[id(leak)] = _detach(co)
            elif conn.in_trx and conn.checkin_seq >= w.seq and conn.serial not in w.trx_before:
                last = conn.last_checkout
                leak = late(
                    self._leak(
                        OPEN_TRANSACTION,
                        1,
                        _conn_what(conn, "idle in a pool inside a transaction"),
                        last.stack if last else conn.stack,
                        last.thread if last else None,
                    ),
                    last.late_for if last else None,
                )
                leaks.append(self._with_conn(leak, conn, by_conn))
                undo[id(leak)] = _rollback(conn)

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
            undo[id(leak)] = _dispose(pool)

        leaks.extend(self.beyond.transaction_leaks(w, snap, by_conn, self.owned_ids))
        leaks.extend(self.beyond.fork_shared_leaks(w.seq))
        pool_leaks, explained = self._driver_pool_leaks(w, by_conn, late)
        leaks.extend(pool_leaks)
        leaks.extend(self._server_leaks(w, snap, by_conn, late, explained))
        self._late_of = late_of
        self._undo = [undo[id(leak)] for leak in leaks if id(leak) in undo]
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
        self,
        w: Window,
        snap: ServerSnapshot,
        by_conn: dict[int, Leak],
        late: Callable[[Leak, str | None], Leak],
        explained: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> list[Leak]:
        tracker = self.tracker
        self._client_open = set()
        new = snap.ids_of(self.users) - w.server.ids_of(self.users) - self.owned_ids
        for provider in self.kept if new else ():
            new -= set(provider())
        if not new:
            return []
        closing = tracker.closed_since(w.seq)
        closing |= self._client_closing(snap, new - closing - set(by_conn))
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
        return leaks

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


def _detach(checkout: Checkout) -> Callable[[], None]:
    def undo() -> None:
        fairy = checkout.fairy() if checkout.fairy is not None else None
        if fairy is not None and fairy.dbapi_connection is not None:
            # Pool bookkeeping only, no statement: the pool gets its slot back and the
            # holder keeps a working connection, closed for real when it is closed.
            # (SQLAlchemy documents PoolProxiedConnection.detach() for this.)
            fairy.detach()

    return undo


def _holder_gone(opened: Opened) -> bool:
    """Whether nobody can use a raw connection any more: its object was collected, or,
    for a driver whose connections cannot be watched, the thread that opened it ended."""
    if opened.ref is not None:
        return opened.ref() is None
    return not _holder_running(opened.thread)


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
