"""Notices a statement stuck behind a lock that a leaked transaction holds, and frees it.

No pytest import. A test that leaves a session open in a transaction holds its row and
metadata locks; a later statement (a fixture's ``DROP TABLE``, a session fixture's
``drop_all()`` after the window closed, a ``pytest_sessionfinish`` hook) then waits for
them - on MySQL's default ``lock_wait_timeout``, for a year. From the first test to the
end of the session, a thread with its own admin connection looks, once the current phase
(a test's window, or the time between two windows) has lasted the bound, every quarter
of the bound, for a statement of the session's users that has waited on a lock for
longer than the bound while a connection of those users has sat idle inside a
transaction for as long. Whom it stops depends on who is at fault:

- an idle holder whose leak was already reported, or that a test which has ended left
  behind, is the culprit: its connection is ended (``KILL CONNECTION``, what
  PostgreSQL's ``idle_in_transaction_session_timeout`` and MariaDB's
  ``idle_transaction_timeout`` do), so the innocent statement proceeds; the resolution
  names the holder, the line that opened it and the test that left it;
- otherwise (the running test's own holder, or one of a wider fixture) the waiting
  statement is interrupted (``KILL QUERY``): inside a test's window it is that test's
  ``lock_wait`` leak.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pytest_dbleak.engine.results import LOCK_WAIT, Leak, Site
from pytest_dbleak.engine.sites import user_sites
from pytest_dbleak.engine.stacks import Frame, stack_of
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.families.base import ServerMonitor

log = logging.getLogger(__name__)


@dataclass
class Stuck:
    """A statement found waiting on a lock, and what probably holds the lock."""

    waiter: int
    statement: str
    waited: float
    state: str
    stack: tuple[Frame, ...]
    thread: str | None
    holders: list[tuple[int, str, tuple[Frame, ...]]] = field(default_factory=list)


@dataclass(frozen=True)
class Resolution:
    """A holder the watch ended, or a statement it interrupted outside any window."""

    culprit: str  # nodeid of the test that left the holder; "" when unknown
    line: str  # one line: what was stopped, what it blocked, where both come from
    stack: tuple[Site, ...] = ()  # user frames of the line that took the holder

    def as_leak(self) -> Leak:
        return Leak(
            LOCK_WAIT,
            0,
            self.line,
            site=self.stack[-1] if self.stack else None,
            stack=list(self.stack),
        )


@dataclass(frozen=True)
class _Ended:
    start: int  # tracker sequence numbers of a closed window
    end: int
    nodeid: str


class LockWatch:
    def __init__(
        self,
        monitor: ServerMonitor,
        users: frozenset[str] | None,
        tracker: Tracker,
        root: Path,
        bound: float,
    ) -> None:
        self.users = users
        self.tracker = tracker
        self.root = root
        self.bound = bound
        self._monitor = monitor  # its own: the watch's thread queries while tests run
        self._armed_at: float | None = None
        self._running: tuple[int, str] | None = None  # (window start seq, nodeid)
        self._phase_at = time.monotonic()  # when the current window or gap began
        self._ended: deque[_Ended] = deque(maxlen=10_000)
        self._reported: dict[int, str] = {}  # server connection id -> test that leaked it
        self.resolutions: list[Resolution] = []  # all of the session, for its summary
        self._taken: list[Resolution] = []  # those already part of a test's verdict
        self._found: list[Stuck] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dbleak-lockwatch", daemon=True)
        self._thread.start()

    def arm(self, seq: int = -1, nodeid: str = "") -> None:
        """A test's window opened at tracker sequence `seq`."""
        with self._lock:
            self._armed_at = self._phase_at = time.monotonic()
            self._running = (seq, nodeid)
            self._found = []
        # No wake-up: the thread reads the phase start whenever it wakes, and never sleeps
        # longer than the bound, so a test costs no thread switch.

    def disarm(self, seq: int | None = None) -> list[Leak]:
        """The window closed (at tracker sequence `seq`): what it held is an ended test's."""
        with self._lock:
            running, self._running = self._running, None
            self._armed_at = None
            self._phase_at = time.monotonic()
            found, self._found = self._found, []
            if running is not None and seq is not None:
                self._ended.append(_Ended(running[0], seq, running[1]))
        return [self._as_leak(s) for s in found]

    def reported(self, connection_ids: list[int], nodeid: str) -> None:
        """These server connections were reported as `nodeid`'s leak."""
        with self._lock:
            for ident in connection_ids:
                self._reported[int(ident)] = nodeid

    def take_resolutions(self, nodeid: str) -> list[Resolution]:
        """The holders of `nodeid` ended since the last call (all stay for the summary)."""
        with self._lock:
            taken = [r for r in self.resolutions if r.culprit == nodeid and r not in self._taken]
            self._taken.extend(taken)
        return taken

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._monitor.close()

    # -- the watching thread -------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                phase_at = self._phase_at
            # Between windows too: a wider fixture's teardown or a sessionfinish hook can
            # wait behind a leak as well as a test can.
            due = phase_at + self.bound - time.monotonic()
            if due > 0:
                self._wake.wait(due)  # a short test never costs a query
                self._wake.clear()
                continue
            try:
                self._look()
            except Exception as exc:  # noqa: BLE001 - a watch must never break the run
                log.debug("dbleak: lock watch: %s", exc)
            self._wake.wait(max(0.05, self.bound / 4))
            self._wake.clear()

    def _look(self) -> None:
        waiting = [w for w in self._monitor.waiting_statements(self.bound) if self._ours(w.user)]
        if not waiting:
            return
        holders = [h for h in self._monitor.idle_in_transaction(self.bound) if self._ours(h.user)]
        if not holders:
            return  # a lock held by a running statement: it ends by itself
        with self._lock:
            running = self._running
        culprits = [(h, c) for h in holders if (c := self._culprit(h.id, running))]
        frames = sys._current_frames()
        stuck_list = []
        for wait in waiting:
            stack, thread = self._where_running(wait.id, frames)
            stuck = Stuck(wait.id, _shorten(wait.info), wait.seconds, wait.state, stack, thread)
            for holder in holders:
                stuck.holders.append((holder.id, holder.started, self._checkout_site(holder.id)))
            stuck_list.append(stuck)
        if culprits:
            # The fault is an ended test's (or a reported leak's): end its holder, not the
            # innocent statement, which then proceeds.
            blocked = "; ".join(
                f"{s.statement} (waited {s.waited:.0f} s{self._at(s.stack)})" for s in stuck_list
            )
            for holder, nodeid in culprits:
                sites = user_sites(self._checkout_site(holder.id), self.root)
                site = f", opened at {sites[-1]}" if sites else ""
                line = (
                    f"ended server connection {holder.id} left in a transaction (since "
                    f"{holder.started}{site}) by {nodeid}: it blocked {blocked}"
                )
                resolution = Resolution(nodeid, line, tuple(sites))
                # Recorded before the kill: the blocked statement proceeds the moment the
                # holder is gone, and the run may reach its verdict and summary before
                # this thread is scheduled again.
                with self._lock:
                    self.resolutions.append(resolution)
                try:
                    self._monitor.end_connection(holder.id)
                except BaseException:
                    with self._lock:
                        self.resolutions.remove(resolution)
                    raise
                log.warning("dbleak: %s", line)
            return
        for stuck in stuck_list:
            with self._lock:
                if running is not None and self._running == running:
                    self._found.append(stuck)
                else:
                    # Outside any window (a wider fixture's teardown, sessionfinish) with
                    # no test to blame: interrupt it all the same, never hang.
                    self.resolutions.append(Resolution("", self._as_leak(stuck).what))
            self._monitor.end_statement(stuck.waiter)

    def _culprit(self, ident: int, running: tuple[int, str] | None) -> str:
        """The nodeid of the ended test that left holder `ident`, or "" when it is the
        running test's, a wider fixture's, or unknown."""
        with self._lock:
            reported = self._reported.get(ident)
        if reported is not None:
            return reported
        seq = self._holder_seq(ident)
        if seq is None or (running is not None and seq >= running[0]):
            return ""
        with self._lock:
            for ended in reversed(self._ended):
                if ended.start <= seq <= ended.end:
                    return ended.nodeid
                if ended.end < seq:
                    break
        return ""

    def _holder_seq(self, ident: int) -> int | None:
        """When the holder's connection was last taken by user code (tracker sequence)."""
        conn = self.tracker.by_thread_id.get(ident)
        if conn is not None:
            co = conn.checkout or conn.last_checkout
            if co is not None:
                return None if co.owned else co.seq
            return None if conn.owned else conn.created_seq
        opened = self.tracker.handed_out_since(ident, 0) or self.tracker.opened_at(ident)
        return opened.seq if opened is not None else None

    def _at(self, stack: tuple[Frame, ...], prefix: str = "at ") -> str:
        sites = user_sites(stack, self.root)
        return f", {prefix}{sites[-1]}" if sites else ""

    def _ours(self, user: str) -> bool:
        return self.users is None or user in self.users

    def _where_running(
        self, ident: int, frames: dict[int, FrameType]
    ) -> tuple[tuple[Frame, ...], str | None]:
        """The stack of the thread whose connection runs the statement, right now."""
        conn = self.tracker.by_thread_id.get(ident)
        name = conn.checkout.thread if conn is not None and conn.checkout else None
        if name is None:
            opened = self.tracker.opened_at(ident)
            name = opened.thread if opened is not None else None
        for thread in threading.enumerate():
            if thread.name == name and thread.ident in frames:
                return stack_of(frames[thread.ident]), name
        return (), name

    def _checkout_site(self, ident: int) -> tuple[Frame, ...]:
        conn = self.tracker.by_thread_id.get(int(ident))
        if conn is None:
            opened = self.tracker.opened_at(int(ident))
            return opened.stack if opened is not None else ()
        co = conn.checkout or conn.last_checkout
        return co.stack if co is not None else conn.stack

    def _as_leak(self, stuck: Stuck) -> Leak:
        sites = user_sites(stuck.stack, self.root)
        holders = []
        for ident, started, stack in stuck.holders:
            where = user_sites(stack, self.root)
            at = f", checked out at {where[-1]}" if where else ""
            holders.append(f"server connection {ident} (in a transaction since {started}{at})")
        what = (
            f"statement on server connection {stuck.waiter} waited {stuck.waited:.0f} s "
            f"({stuck.state or 'for a lock'}) and was interrupted: {stuck.statement}; "
            f"idle in a transaction meanwhile: {', '.join(holders)}"
        )
        leak = Leak(
            LOCK_WAIT, 0, what, site=sites[-1] if sites else None, stack=sites, thread=stuck.thread
        )
        leak.connection_ids.append(stuck.waiter)
        return leak


def _shorten(info: object, limit: int = 200) -> str:
    text = " ".join(str(info or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
