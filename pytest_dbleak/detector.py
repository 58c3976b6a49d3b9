"""Compares the state before and after a window and names what was left behind.

No pytest import. The pool side comes from the Tracker, the server side from the
Monitor's processlist; a server connection is a leak unless a surviving pool that the
window did not create explains it as an idle connection.
"""

from __future__ import annotations

import os
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .beyond_pools import BeyondPools
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
    Site,
)
from .tracking import ConnState, Frame, Tracker

_LIBRARY_DIRS = tuple(
    {
        os.path.realpath(p) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    | {os.path.dirname(os.path.realpath(__file__)) + os.sep}
)
_MACHINERY = tuple(
    f"{os.sep}{name}{os.sep}"
    for name in ("sqlalchemy", "pymysql", "pytest_dbleak", "_pytest", "pluggy", "flask_sqlalchemy",
                 "MySQLdb", "mysql", "mariadb", "aiomysql", "asyncmy", "greenlet", "asyncio")
)


@dataclass
class Window:
    """The state at the start of a test or block."""

    seq: int
    server: ServerSnapshot
    trx_before: set[int]
    checked_out: int
    started: float = field(default_factory=time.monotonic)
    # Open transactions (thread id -> trx id) of idle connections no pool holds (BeyondPools)
    server_trx: dict[int, str] | None = None


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
        self._lock = threading.Lock()

    # -- windows -----------------------------------------------------------------
    def begin(self, *, reuse: bool = False) -> Window:
        """Open a window. With reuse, the previous check's final snapshot is the baseline:
        nothing but pytest's own bookkeeping runs between two tests."""
        seq = self.tracker.mark()
        server = self._last if (reuse and self._last is not None) else self.monitor.snapshot()
        return Window(
            seq, server, self.tracker.idle_in_transaction(), self.tracker.checked_out_count(),
            server_trx=self.beyond.transactions_before(server),
        )

    def finish(self, window: Window, nodeid: str, *, allow: int, settle: float) -> CheckResult:
        leaks, snap = self._collect(window)
        waited_from = time.monotonic()
        delay = 0.01
        rechecked = False
        # Re-check with backoff: a closed connection lingers in the processlist for a
        # moment, and a background thread may be returning its connection right now.
        while leaks and time.monotonic() - waited_from < settle:
            rechecked = True
            time.sleep(min(delay, max(0.0, settle - (time.monotonic() - waited_from))))
            delay = min(delay * 2, 0.05)  # notice a suspicion clearing within 50 ms
            leaks, snap = self._collect(window)
        # The time spent re-checking, also when the suspicion cleared: 0 only for a test
        # that was clean at the first look.
        waited = time.monotonic() - waited_from if rechecked else 0.0
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
        by_conn: dict[int, Leak] = {}  # server id -> the leak that already covers it

        for conn in tracker.connections():
            co = conn.checkout
            if co is not None:
                if co.seq >= w.seq and not co.owned:
                    leak = self._leak(CHECKED_OUT, 1, _conn_what(conn, "checked out"),
                                      co.stack, co.thread)
                    leaks.append(self._with_conn(leak, conn, by_conn))
            elif conn.in_trx and conn.checkin_seq >= w.seq and conn.serial not in w.trx_before:
                last = conn.last_checkout
                leak = self._leak(
                    OPEN_TRANSACTION, 1, _conn_what(conn, "idle in a pool inside a transaction"),
                    last.stack if last else conn.stack, last.thread if last else None,
                )
                leaks.append(self._with_conn(leak, conn, by_conn))

        for gc in tracker.gc_returns_since(w.seq):
            if not gc.checkout.owned:
                leaks.append(self._leak(
                    GC_RETURN, 1,
                    _conn_what(gc.conn, "was checked out here and dropped without close()"),
                    gc.checkout.stack, gc.checkout.thread,
                ))

        for pool in tracker.pools_created_since(w.seq):
            if pool.owned:
                continue
            held = [c for c in pool.open.values() if c.checkout is None and not c.in_trx]
            if not held:
                continue
            state = "still alive" if pool.alive else "reclaimed by the garbage collector"
            what = (f"{pool.pool_class} {state} without dispose(), holding "
                    f"{len(held)} server connection{'s' if len(held) != 1 else ''}")
            leak = self._leak(UNDISPOSED_ENGINE, len(held), what, pool.stack, pool.thread)
            for conn in held:
                self._with_conn(leak, conn, by_conn)
            leaks.append(leak)

        leaks.extend(self.beyond.transaction_leaks(w, snap, by_conn, self.owned_ids))
        leaks.extend(self.beyond.fork_shared_leaks(w.seq))
        leaks.extend(self._server_leaks(w, snap, by_conn))
        for ident, leak in by_conn.items():
            row = snap.rows.get(ident)
            if row is not None and not any(r["id"] == ident for r in leak.processlist):
                leak.processlist.append(row.as_dict())
        return leaks, snap

    def _server_leaks(
        self, w: Window, snap: ServerSnapshot, by_conn: dict[int, Leak]
    ) -> list[Leak]:
        tracker = self.tracker
        new = snap.ids_of(self.users) - w.server.ids_of(self.users) - self.owned_ids
        if not new:
            return []
        closing = tracker.closed_since(w.seq)
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
            1 for c in tracker.connections()
            if c.thread_id is None and c.created_seq >= w.seq and c.checkout is None
        )
        leaks = []
        for row in unexplained[anonymous:]:
            opened = tracker.opened_at(row.id)  # a raw driver connection of this process
            stack, thread, owner = (opened.stack, opened.thread, "") if opened else (
                self.beyond.child_site(row))
            leak = self._leak(
                SERVER_CONNECTION, 1,
                f"server connection {row.id} ({row.user}@{row.host}, {row.command}) "
                f"opened during the test and still open; no pool of this process owns it{owner}",
                stack, thread,
            )
            leak.connection_ids.append(row.id)
            leak.processlist.append(row.as_dict())
            leaks.append(leak)
        return leaks

    def _leak(
        self, kind: str, count: int, what: str, stack: tuple[Frame, ...], thread: str | None
    ) -> Leak:
        sites = user_sites(stack, self.root)
        return Leak(kind, count, what, site=sites[-1] if sites else None, stack=sites,
                    thread=thread)

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


def _conn_what(conn: ConnState, state: str) -> str:
    ident = f"server connection {conn.thread_id}" if conn.thread_id is not None else "connection"
    return f"{ident} of {conn.pool.pool_class} {state}"


def user_sites(stack: tuple[Frame, ...], root: Path, limit: int = 8) -> list[Site]:
    """The frames of user code in `stack` (innermost first), outermost first.

    Library frames (site-packages, the standard library, this plugin) are dropped; if
    nothing is left - say, the project itself is installed - only the database
    machinery is dropped.
    """
    frames = [f for f in stack if not _is_library(f[0])]
    if not frames:
        frames = [f for f in stack if not any(m in f[0] for m in _MACHINERY)]
    return [Site(_relative(f[0], root), f[1], f[2]) for f in frames[:limit]][::-1]


def _is_library(filename: str) -> bool:
    return filename.startswith("<") or filename.startswith(_LIBRARY_DIRS)


def _relative(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).relative_to(root))
    except ValueError:
        return filename
