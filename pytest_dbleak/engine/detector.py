"""A leak check's window, from its start to its one verdict. No pytest import.

``start`` (or ``begin``) opens a window; ``close`` (or ``finish``) waits out what can
still change, then builds the window's one frozen ``CheckResult`` from everything it is
given (lock-wait findings, stress runs, ``allow``, baseline knowledge) and returns it,
with how to take its leaks back (``Reclaim``) and the leaks found for earlier tests. What
a window left behind is the Comparison's (comparison.py); nothing a look finds is kept
here for a later call.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_dbleak.engine.comparison import Comparison, Look
from pytest_dbleak.engine.reclaim import Reclaim, holder_running
from pytest_dbleak.engine.results import (
    GC_RETURN,
    KINDS,
    SERVER_CONNECTION,
    CheckResult,
    Knows,
    Leak,
    conclude,
)
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.engine.window import Window
from pytest_dbleak.families.base import ServerMonitor, ServerSnapshot

Late = tuple[str, Leak]  # a leak of an earlier test, whose thread opened it after it ended


@dataclass(frozen=True)
class Closed:
    """What the end of a window returns: its verdict and what goes with it."""

    result: CheckResult
    reclaim: Reclaim  # how to take the result's leaks back, should they fail the test
    late: tuple[Late, ...]  # leaks found in this window that earlier tests' threads opened


class Detector:
    """Runs leak checks against one server for one session user (or all users)."""

    def __init__(
        self, tracker: Tracker, monitor: ServerMonitor, users: frozenset[str] | None, root: Path
    ) -> None:
        self.tracker = tracker
        self.monitor = monitor
        self.users = users
        self.root = root
        self.comparison = Comparison(tracker, monitor, users, root)
        # Shared with the comparison (never rebound): wider fixtures' server connections,
        # and providers of those a framework keeps open for reuse (see Comparison).
        self.owned_ids: set[int] = self.comparison.owned_ids
        self.kept: list[Callable[[], Iterable[int]]] = self.comparison.kept
        self.beyond = self.comparison.beyond
        # The previous window's final snapshot, the next window's baseline (begin(reuse)).
        self._last: ServerSnapshot | None = None
        self._after: tuple[int, ServerSnapshot] | None = None  # the last window's end

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

    def start(self, *, reuse: bool = False) -> Window:
        """Open a window (``begin``)."""
        return self.begin(reuse=reuse)

    def finish(
        self,
        window: Window,
        nodeid: str,
        *,
        allow: int,
        settle: float = 0.0,
        patient: bool = False,
        stuck: Sequence[Leak] = (),
        stress: tuple[str, int] | None = None,
        known: Knows | None = None,
        report_only: bool = False,
    ) -> CheckResult:
        """The one verdict of `window` (see ``close``)."""
        return self.close(
            window,
            nodeid,
            allow=allow,
            settle=settle,
            patient=patient,
            stuck=stuck,
            stress=stress,
            known=known,
            report_only=report_only,
        ).result

    def close(
        self,
        window: Window,
        nodeid: str,
        *,
        allow: int,
        settle: float = 0.0,
        patient: bool = False,
        stuck: Sequence[Leak] = (),
        stress: tuple[str, int] | None = None,
        known: Knows | None = None,
        report_only: bool = False,
    ) -> Closed:
        """End `window`: its one frozen result, built from what the window left and from
        everything else the verdict needs - `stuck` (statements the lock watch found
        stuck behind this test's leaks), `stress` (the stress kind and its runs),
        `allow`, `known` (baseline knowledge) and `report_only`.

        `patient`: re-check every suspicion for up to `settle` (the test asked for its
        settle time), not only those that can still change."""
        started = time.monotonic()
        # Somebody may have removed listeners during the test (a teardown calling
        # Pool.dispatch._clear()): put them back, and judge this window on the server only.
        self.tracker.verify()
        compare = self.comparison
        look = compare.look(window)
        rechecked = False
        # A connection nobody references any more but a reference cycle: a collection
        # gives it back now, rather than some later test's. The young generations first
        # (what the test just made lives there, and they cost microseconds); the full
        # collection, which costs a large process a tenth of a second or more (every
        # known leak of a baseline run paid it), only for a suspicion that outlived them
        # and only when a collection during the window may have aged what the test made.
        young = True
        for generation in (1, 2):
            if not (settle > 0 and any(compare.gc_may_return(leak) for leak in look.own())):
                break
            if generation == 1:
                young = window.made_only_young()  # before our own collection counts as one
            elif young:
                break
            rechecked = True
            gc.collect(generation)
            look = compare.look(window)
        delay = 0.01
        threads = self.tracker.threads
        # Re-check only what can still change - a server row whose client this machine
        # cannot see close, a connection held by a thread that is still running - with
        # backoff, for at most `settle`. A leak whose holder is gone is judged at once. A
        # thread the test started and that still runs is the test's: it is waited for,
        # leak or not, so that what it opens is judged here rather than blamed on a later
        # test.
        while (
            (own := look.own())
            and (
                patient
                or _started_threads_running(window)
                or any(_may_change(leak) and not look.settled(leak) for leak in own)
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
            look = compare.look(window)
        # Still running after the settle time: what they open from now on is this test's.
        threads.blame(threads.running_since(window.seq), nodeid)
        late = tuple(
            (look.late_of[id(leak)], leak) for leak in look.leaks if id(leak) in look.late_of
        )
        leaks = look.own()
        # The time spent judging a suspicion, also when it cleared: 0 only for a test that
        # was clean at the first look.
        waited = time.monotonic() - started if rechecked else 0.0
        snap = look.snap
        self._last = snap
        self._after = (self.tracker.mark(), snap)
        if leaks:
            compare.describe_transactions(leaks)
        self.tracker.prune()
        kind, runs = stress if stress is not None else (None, None)
        result = conclude(
            CheckResult(
                nodeid=nodeid,
                leaks=(*sorted(leaks, key=lambda leak: KINDS.index(leak.kind)), *stuck),
                allowed=allow,
                before=compare.counts(window.server, window.checked_out),
                after=compare.counts(snap, self.tracker.checked_out_count()),
                waited=round(waited, 4),
                stress=kind,
                runs=runs,
                report_only=report_only,
                counter=snap.counter,
            ),
            known=known,
        )
        return Closed(result, _reclaim_of(look, result), late)

    def reclaim(self, targets: Reclaim) -> None:
        """Take back what a failing result leaked (see ``Reclaim``): `targets` is the
        ``Closed.reclaim`` of that result's window."""
        targets.run(self.tracker, self.monitor)
        self._last = None  # the next window starts from what is left now

    def late_at_end(self, settle: float) -> list[Late]:
        """After the last test: wait up to `settle` for threads that outlived their test,
        then judge what they opened since the last window closed."""
        threads = self.tracker.threads
        deadline = time.monotonic() + settle
        while (running := [t for t in list(threads.late) if t.is_alive()]) and (
            left := deadline - time.monotonic()
        ) > 0:
            running[0].join(left)
        if self._after is None or not threads.late:
            return []
        seq, snap = self._after
        look = self.comparison.look(Window(seq, snap, set(), 0, server_trx=None))
        return [(look.late_of[id(leak)], leak) for leak in look.leaks if id(leak) in look.late_of]

    def forget_baseline(self) -> None:
        """The next window takes a fresh snapshot: an unchecked test ran in between."""
        self._last = None

    def note_owned_server_connections(self, before: ServerSnapshot) -> None:
        """Connections that appeared while a wider-scoped fixture was set up are its own."""
        after = self.monitor.snapshot()
        self.owned_ids.update(after.ids_of(self.users) - before.ids_of(self.users))
        self.beyond.note_owned_transactions(after)
        self._last = after

    def snapshot(self) -> ServerSnapshot:
        return self.monitor.snapshot()


def _reclaim_of(look: Look, result: CheckResult) -> Reclaim:
    """How to take back the leaks of `result`, which came from `look`."""
    return Reclaim(
        undo=look.undo,
        server_ids=tuple(
            i
            for leak in result.leaks
            if leak.kind == SERVER_CONNECTION
            for i in leak.connection_ids
        ),
    )


def _started_threads_running(window: Window) -> bool:
    current = threading.current_thread()
    return any(t.ident not in window.threads for t in threading.enumerate() if t is not current)


def _may_change(leak: Leak) -> bool:
    if leak.kind == GC_RETURN:
        return False  # it happened
    if leak.kind == SERVER_CONNECTION and not leak.stack and leak.thread is None:
        return True  # opened by nobody this process saw: may be a close the server lags on
    return holder_running(leak.thread)
