"""Leaks no SQLAlchemy pool of this process tells of: transactions left open on other
connections, and connections of the test's child processes.

- A transaction that began during the window on an idle server connection that no
  tracked pool holds (another driver's pool, a raw connection of a wider-scoped fixture)
  is an ``open_transaction`` leak, unless a wider-scoped fixture began it. The server
  says when it began and what it locks (``ServerMonitor.transactions``).
- A connection a child process holds carries the child's connect line (a forked child
  reports it) or the line that started the child; the fork bug (a parent's pooled
  connection used in a forked child) is a ``fork_shared`` leak.

Used by the Detector; no pytest import.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dbleak.engine.results import FORK_SHARED, OPEN_TRANSACTION, Leak
from pytest_dbleak.engine.sites import site_leak, user_sites
from pytest_dbleak.engine.stacks import Frame
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.families.base import ProcessRow, ServerMonitor, ServerSnapshot

if TYPE_CHECKING:
    from pytest_dbleak.engine.window import Window


class BeyondPools:
    """Finds what it finds and returns it: the Detector merges it into its own look."""

    def __init__(
        self, tracker: Tracker, monitor: ServerMonitor, users: frozenset[str] | None, root: Path
    ) -> None:
        self.tracker = tracker
        self.monitor = monitor
        self.users = users
        self.root = root
        self.owned_trx: set[tuple[int, str]] = set()  # (thread id, trx id) fixtures began

    # -- transactions on connections no pool holds ----------------------------------
    def _untracked(self, snap: ServerSnapshot, *, idle_only: bool = True) -> set[int]:
        """Idle connections (with `idle_only` false: all of them) of the session's user that
        no tracked pool holds."""
        pooled = self.tracker.by_thread_id
        return {
            r.id
            for r in snap.rows.values()
            if (self.users is None or r.user in self.users)
            and (r.command == "Sleep" or not idle_only)
            and (r.id not in pooled or pooled[r.id].collected)
        }

    def transactions_before(self, snap: ServerSnapshot) -> dict[int, str]:
        """Open transactions (thread id -> trx id) of those connections at a window's start.

        Busy ones too: the baseline is often the previous test's last snapshot, taken the
        moment that test returned, when the server may not yet have set a connection whose
        reply the client already read back to Sleep. Left out, its transaction would look
        begun during the next test, and a clean test would be blamed for it (seen under
        load on a docker server).
        """
        ids = self._untracked(snap, idle_only=False)
        if not ids:
            return {}  # nothing but tracked pools: no query
        infos = self.monitor.transactions(ids)
        return {ident: info.trx_id for ident, info in infos.items()}

    def note_owned_transactions(self, snap: ServerSnapshot) -> None:
        """After a wider-scoped fixture's setup: the transactions it began are its own."""
        infos = self.monitor.transactions(self._untracked(snap, idle_only=False))
        self.owned_trx |= {(ident, info.trx_id) for ident, info in infos.items()}

    def transaction_leaks(
        self, w: Window, snap: ServerSnapshot, covered: Collection[int], owned_ids: set[int]
    ) -> list[Leak]:
        """Transactions begun during the window on idle connections that existed before it
        (or that a wider-scoped fixture opened) and that no pool holds; `covered`: server
        connections another leak of the window already names."""
        if w.server_trx is None:
            return []
        # Busy during the window: processlist Time (seconds in the current state) is at
        # most the window's length. Connections opened during the window are
        # server_connection leaks already.
        elapsed = time.monotonic() - w.started + 1
        candidates = {
            ident
            for ident in self._untracked(snap, idle_only=False)
            if ident not in covered
            and snap.rows[ident].time <= elapsed
            and (ident in w.server.rows or ident in owned_ids)
        }
        if not candidates:
            return []
        began = {
            ident: info
            for ident, info in self.monitor.transactions(candidates).items()
            # open before the window, or begun by a wider-scoped fixture: not the test's
            if w.server_trx.get(ident) != info.trx_id and (ident, info.trx_id) not in self.owned_trx
        }
        rows = dict(snap.rows)
        busy = {ident for ident in began if rows[ident].command != "Sleep"}
        if busy:
            rows.update(self._settled(busy))
        leaks = []
        for ident, info in sorted(began.items()):
            row = rows[ident]
            if row.command != "Sleep":
                continue  # running a statement: not left idle (and no blame later either)
            site = self.tracker.handed_out_since(ident, w.seq) or self.tracker.opened_at(ident)
            leak = site_leak(
                OPEN_TRANSACTION,
                1,
                f"server connection {ident} ({row.user}@{row.host}) idle inside a transaction "
                f"that began during the test ({info.describe()}); no pool of this process "
                "holds it",
                site.stack if site else (),
                site.thread if site else None,
                self.root,
            )
            leak.connection_ids.append(ident)
            leak.processlist.append({**row.as_dict(), "trx_started": info.started})
            leaks.append(leak)
        return leaks

    def _settled(self, busy: set[int], bound: float = 0.05) -> dict[int, ProcessRow]:
        """The rows of `busy` connections once idle, or as they are after `bound` s.

        A client goes on the moment it has read its reply, while the server still shows
        the statement for a moment ("Writing to net"); a test that leaves a transaction
        open and returns at once ends inside that moment (seen under load, and through
        docker's port proxy). The server gives no event for it: its processlist is read
        again, at growing intervals, only for connections that began a transaction during
        the test and are not idle - a rare case, and short.
        """
        deadline = time.monotonic() + bound
        delay = 0.0005
        rows: dict[int, ProcessRow] = {}
        while True:
            now = self.monitor.snapshot().rows
            rows = {ident: now[ident] for ident in busy if ident in now}
            if all(row.command == "Sleep" for row in rows.values()):
                return rows
            if time.monotonic() >= deadline:
                return rows
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    # -- child processes -----------------------------------------------------------------
    def child_site(self, row: ProcessRow) -> tuple[tuple[Frame, ...], str | None, str]:
        """Site, thread and a note for a connection a child process of the test holds: the
        child's own connect line when it was forked (it reports), else the line that
        started it."""
        children = self.tracker.children
        reported = children.opened_by_child(row.id)
        if reported is not None:
            return reported.stack, reported.thread, f" (child process {reported.pid})"
        pid = children.owner_of(row.host, self.monitor.endpoint.port)
        if pid is None:
            return (), None, ""
        started = children.starter_of(pid)
        if started is None:
            return (), None, f" (child process {pid})"
        return started.stack, started.thread, f" (child process {pid}, started here)"

    def fork_shared_leaks(self, since_seq: int) -> list[Leak]:
        """The fork bug: a child forked during the window used a pooled connection that
        this process opened; both now talk over one socket."""
        leaks: list[Leak] = []
        seen: set[tuple[int, int | None]] = set()
        for event in self.tracker.children.events():
            if event.kind != FORK_SHARED or event.fork_seq < since_seq:
                continue
            if (event.pid, event.thread_id) in seen:
                continue
            seen.add((event.pid, event.thread_id))
            parent = user_sites(event.parent_stack, self.root)
            opened = f" opened at {parent[-1].file}:{parent[-1].line}" if parent else ""
            ident = f"server connection {event.thread_id}" if event.thread_id else "a connection"
            leak = site_leak(
                FORK_SHARED,
                1,
                f"{ident}{opened} by this process, used by child process {event.pid} "
                "(forked during the test): both talk over one socket; call "
                "engine.dispose(close=False) in the child",
                event.stack,
                f"{event.thread} of child process {event.pid}",
                self.root,
            )
            if event.thread_id is not None:
                leak.connection_ids.append(event.thread_id)
            leaks.append(leak)
        return leaks
