"""Each test's leak check, from the window's start before its setup to its verdict on
the teardown report. Owned by the manager (``DbleakManager.checks``), which calls it from
its hooks; the fixtures only tell it of stress runs (``count_runs``).

The window's end makes the test's one frozen result (``Detector.close``), from what the
window left and from everything else the verdict needs: what the lock watch found stuck
behind the test, the stress runs, ``allow``, the baseline's knowledge, ``report_only``.
The result then travels on the teardown report (``report.dbleak``, see verdict.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.results import LOCK_WAIT, CheckResult, Knows
from pytest_dbleak.engine.runtime import Runtime
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.pytest_layer import _pytest_seam, marks, verdict

if TYPE_CHECKING:
    from pytest_dbleak.engine.detector import Closed
    from pytest_dbleak.engine.window import Window

MARKS = pytest.StashKey[dict[str, Any]]()  # validated marker values of an item


@dataclass
class Check:
    """One test's (one attempt's) leak check, from its setup to its teardown report."""

    allow: int
    settle: float
    patient: bool  # the test set its own settle time: wait it out for every suspicion
    window: Window | None = None
    gone: DbleakError | None = None  # the server died, or the instrumentation was taken
    placed: bool = False  # the window's end is queued behind the item's own finalizers
    closed: bool = False
    stress: tuple[str, int] | None = None  # (stress kind, runs) the stress fixtures ran
    end: Closed | None = None  # the window's end: its result, reclaim and late leaks
    reports: tuple[pytest.TestReport, ...] = ()  # setup, call


CHECK = pytest.StashKey[Check]()
EARLIER_LEAK = pytest.StashKey[CheckResult]()  # a failing leak of an earlier attempt


class Checks:
    """Opens, closes and judges the check of each test. Writes the item's stash keys;
    nobody else does."""

    def __init__(self, runtime: Runtime, settings: Settings, redact: Redactor) -> None:
        self.runtime = runtime
        self.settings = settings
        self.redact = redact
        self.knows: Knows | None = None  # the baseline's knowledge, once it is loaded

    def count_runs(self, item: pytest.Item, kind: str, runs: int) -> None:
        """A stress fixture ran its load `runs` times: the leak report's rate."""
        check = item.stash.get(CHECK, None)
        if check is not None:
            previous = check.stress[1] if check.stress is not None else 0
            kind = check.stress[0] if check.stress is not None else kind
            check.stress = (kind, previous + runs)

    def open(self, item: pytest.Item) -> Check | None:
        detector = self.runtime.detector
        if CHECK in item.stash:
            del item.stash[CHECK]  # a rerun's check starts afresh, its stress runs too
        if detector is None or not self.settings.enabled:
            return None
        item_marks = item.stash.get(MARKS, {})
        if "no_dbleak" in item_marks:
            return None  # what it leaves is nobody else's fault: see pytest_runtest_teardown
        leak_mark: marks.LeakMark = item_marks.get("dbleak") or marks.LeakMark()
        check = Check(
            allow=self.settings.allow if leak_mark.allow is None else leak_mark.allow,
            settle=self.settings.settle_timeout if leak_mark.settle is None else leak_mark.settle,
            patient=leak_mark.settle is not None,
        )
        try:
            check.window = detector.begin(reuse=True)
        except DbleakError as exc:  # ServerGoneError, or a SeamError from verify()
            check.gone = exc
        if self.runtime.lockwatch is not None:
            seq = check.window.seq if check.window is not None else -1
            self.runtime.lockwatch.arm(seq, item.nodeid)
        item.stash[CHECK] = check
        return check

    def close(self, item: pytest.Item, check: Check) -> None:
        """The window's end: after the item's own finalizers, before any wider one."""
        if check.closed:
            return
        check.closed = True
        lockwatch = self.runtime.lockwatch
        tracker = self.runtime.tracking
        stuck = (
            lockwatch.disarm(tracker.tick() if tracker is not None else None)
            if lockwatch is not None
            else []
        )
        detector = self.runtime.detector
        if check.window is None or detector is None:
            return
        try:
            check.end = detector.close(
                check.window,
                item.nodeid,
                allow=check.allow,
                settle=check.settle,
                patient=check.patient,
                stuck=stuck,
                stress=check.stress,
                known=self.knows,
                report_only=self.settings.report_only,
            )
        except DbleakError as exc:  # ServerGoneError, or a SeamError from verify()
            check.gone = exc
            return
        if lockwatch is not None:
            for nodeid, leak in check.end.late:
                lockwatch.reported(leak.connection_ids, nodeid)

    def judge(self, item: pytest.Item, check: Check, report: pytest.TestReport) -> None:
        try:
            self._judge(item, check, report)
        finally:
            # The item outlives its test (pytest keeps every item): what the check held
            # (snapshots, thread sets, reports) would grow the run by kilobytes per test.
            check.window = None
            check.reports = ()
            check.end = None  # the report carries the result on
            if item.stash.get(CHECK, None) is check:
                del item.stash[CHECK]

    def _judge(self, item: pytest.Item, check: Check, report: pytest.TestReport) -> None:
        if check.gone is not None:
            message = self.redact(f"dbleak: {check.gone}; stopping the run")
            verdict.server_gone(report, message, location(item))
            item.session.shouldstop = message
            self.runtime.server_gone()  # no more checks against a dead server
            return
        end = check.end
        if end is None:
            return
        if end.late:
            # Not this test's: threads an earlier test started opened them after its
            # window closed. They travel on this report to whoever keeps the results.
            report.dbleak_late = end.late  # type: ignore[attr-defined]
        result = end.result
        lockwatch = self.runtime.lockwatch
        if lockwatch is not None:
            # What this test left blocked a wider fixture's teardown after its window
            # closed, and was ended then: part of this test's verdict, found after its
            # result was made, so a new result in its place (results are frozen).
            ended = [r.as_leak() for r in lockwatch.take_resolutions(item.nodeid)]
            if ended:
                result = result.adding(ended, known=self.knows)
        note = ""
        earlier = item.stash.get(EARLIER_LEAK, None)
        if result.failed:
            item.stash[EARLIER_LEAK] = result
        elif earlier is not None:
            # A rerun does not take a leak back: the code leaked in an earlier attempt.
            result, note = earlier, "dbleak: leaked in an earlier attempt of this test"
        verdict.apply(
            report,
            result,
            own_failure=report.failed or any(r.failed for r in check.reports),
            location=location(item),
            redact=self.redact,
            note=note,
        )
        if report.failed or not any(r.skipped for r in check.reports):
            # A skipped test was not checked (as reporting.checked() counts it).
            item.config.hook.pytest_dbleak_result(item=item, result=result)
        if lockwatch is not None:
            # Reported (failing, known or report-only alike): if it ever blocks a later
            # statement, it is the culprit and its connection is ended.
            lockwatch.reported(
                [i for leak in result.leaks if leak.kind != LOCK_WAIT for i in leak.connection_ids],
                item.nodeid,
            )
        detector = self.runtime.detector
        if result.failed and not note and self.settings.reclaim and detector is not None:
            # Reported: now take it back, so the blame stays here and later tests do not
            # wait on an exhausted pool. A tolerated leak stays, as without the plugin.
            detector.reclaim(end.reclaim)

    def placed_after_teardown(self, item: pytest.Item, check: Check) -> None:
        """Queue the window's end behind the item's own finalizers."""
        check.placed = _pytest_seam.run_after_item_teardown(item, lambda: self.close(item, check))


def location(item: pytest.Item) -> tuple[str, int]:
    return item.location[0], (item.location[1] or 0) + 1
