"""Notices a statement stuck behind a lock that a leaked transaction holds.

No pytest import. A test that leaves a session open in a transaction holds its row and
metadata locks; a later statement of the same test (a fixture's ``DROP TABLE``, say)
then waits for them - on MySQL's default ``lock_wait_timeout``, for a year. While a
test's window is open, a thread with its own admin connection looks, once the window
has been open for the bound, every quarter of the bound, for a statement of the
session's users that has waited on a lock for longer than the bound while a
connection of those users has sat idle inside a transaction for as long. It records the statement,
the line that runs it and the idle holders, and interrupts the statement
(``KILL QUERY``), so that the test fails and the run goes on.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from .probe import Endpoint, Monitor
from .results import LOCK_WAIT, Leak
from .sites import user_sites
from .stacks import Frame, stack_of
from .tracking import Tracker

log = logging.getLogger(__name__)

# Waiting on a lock: a metadata-lock state in the processlist, or an InnoDB row-lock wait.
_WAITING = """
SELECT p.ID, p.USER, p.TIME, p.STATE, p.INFO FROM information_schema.PROCESSLIST p
WHERE p.COMMAND = 'Query' AND p.TIME >= %s AND p.ID <> CONNECTION_ID()
  AND (p.STATE LIKE 'Waiting for%%lock%%' OR p.ID IN (
       SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX
       WHERE trx_state = 'LOCK WAIT'))
"""
# Idle inside a transaction for the bound too: a transaction between two of its
# statements (busy code under stress) is idle for milliseconds, a forgotten one for good.
_IDLE_IN_TRX = """
SELECT p.ID, p.USER, t.trx_started FROM information_schema.INNODB_TRX t
JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
WHERE p.COMMAND = 'Sleep' AND p.TIME >= %s
"""


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


class LockWatch:
    def __init__(
        self,
        endpoint: Endpoint,
        where: str,
        users: frozenset[str] | None,
        tracker: Tracker,
        root: Path,
        bound: float,
    ) -> None:
        self.users = users
        self.tracker = tracker
        self.root = root
        self.bound = bound
        self._monitor = Monitor(endpoint, where)
        self.connection_id = self._monitor.connection_id
        self._armed_at: float | None = None
        self._found: list[Stuck] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dbleak-lockwatch", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._lock:
            self._armed_at = time.monotonic()
            self._found = []
        # No wake-up: the thread reads the arm time whenever it wakes, and never sleeps
        # longer than the bound, so a test costs no thread switch.

    def disarm(self) -> list[Leak]:
        with self._lock:
            self._armed_at = None
            found, self._found = self._found, []
        return [self._as_leak(s) for s in found]

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._monitor.close()

    # -- the watching thread -------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                armed_at = self._armed_at
            if armed_at is None:
                self._wake.wait(self.bound)
                self._wake.clear()
                continue
            due = armed_at + self.bound - time.monotonic()
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
        waiting = [r for r in self._monitor.query(_WAITING, (int(self.bound),)) if self._ours(r[1])]
        if not waiting:
            return
        bound = (int(self.bound),)
        holders = [r for r in self._monitor.query(_IDLE_IN_TRX, bound) if self._ours(r[1])]
        if not holders:
            return  # a lock held by a running statement: it ends by itself
        frames = sys._current_frames()
        for ident, _user, seconds, state, info in waiting:
            stack, thread = self._where_running(int(ident), frames)
            stuck = Stuck(
                int(ident), _shorten(info), float(seconds), str(state or ""), stack, thread
            )
            for holder, _huser, started in holders:
                stuck.holders.append((int(holder), str(started), self._checkout_site(holder)))
            with self._lock:
                if self._armed_at is None:
                    return
                self._found.append(stuck)
            self._monitor.query(f"KILL QUERY {int(ident)}")

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
