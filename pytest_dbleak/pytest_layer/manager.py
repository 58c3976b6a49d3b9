"""The one object that owns a run's state: its Runtime (server, database, checks),
each test's check, and the results.

Registered by plugin.py in ``pytest_configure`` and reachable through
``config.stash[MANAGER]``; every hook that needs state is a method here. What a report
says is verdict.py's; how it reads, reporting.py's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbleak import families
from pytest_dbleak.engine.errors import DbleakError, Redactor, ServerGoneError
from pytest_dbleak.engine.results import LOCK_WAIT, CheckResult, Leak
from pytest_dbleak.engine.runtime import Runtime
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.engine.signals import interrupts_held
from pytest_dbleak.pytest_layer import _pytest_seam, marks, verdict
from pytest_dbleak.reports import reporting

if TYPE_CHECKING:
    from pytest_dbleak.engine.lockwatch import Resolution
    from pytest_dbleak.engine.window import Window
    from pytest_dbleak.pytest_layer.django_support import DjangoSupport
    from pytest_dbleak.reports.baseline import Baseline

log = logging.getLogger(__name__)

MANAGER = pytest.StashKey["DbleakManager"]()
# Exit status when the only failures are leaks, so CI can tell them from broken tests.
EXIT_LEAKS_FOUND = 6
MARKS = pytest.StashKey[dict[str, Any]]()  # validated marker values of an item
STRESS = pytest.StashKey[tuple[str, int]]()  # (stress kind, runs) set by stress fixtures


@dataclass
class _Check:
    """One test's (one attempt's) leak check, from its setup to its teardown report."""

    allow: int
    settle: float
    patient: bool  # the test set its own settle time: wait it out for every suspicion
    window: Window | None = None
    gone: DbleakError | None = None  # the server died, or the instrumentation was taken
    placed: bool = False  # the window's end is queued behind the item's own finalizers
    closed: bool = False
    result: CheckResult | None = None
    late: list[tuple[str, Leak]] = field(default_factory=list)  # earlier tests' late leaks
    reports: list[pytest.TestReport] = field(default_factory=list)  # setup, call


CHECK = pytest.StashKey[_Check]()
EARLIER_LEAK = pytest.StashKey[CheckResult]()  # a failing leak of an earlier attempt


class DbleakManager:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.redact = Redactor()
        workerinput = getattr(config, "workerinput", {})
        self.runtime = Runtime(
            settings,
            self.redact,
            families.get("mysql"),  # the one family the fixtures serve today
            worker=workerinput.get("workerid", "main"),
            shared=workerinput.get("dbleak_server"),
            root=config.rootpath,
            note=self._note,
        )
        self.results: dict[str, CheckResult] = {}
        self.outcomes: dict[str, str] = {}
        self.status = verdict.DeferredStatus()
        self._failed_reports: dict[str, pytest.TestReport] = {}  # nodeid -> setup/call
        self.leak_failures: set[str] = set()  # failed because of a leak only
        self.late_failures: set[str] = set()  # passed, then a thread it left leaked
        self.other_failures: set[str] = set()
        self.baseline: Baseline | None = None
        self.recording = False  # --dbleak-baseline names a file that does not exist yet
        self._baseline_line = ""
        self._announced = False  # pytest_dbleak_server was called
        self._written: list[str] = []  # "JSON report: PATH", said at the end of the run
        self._closed = False
        self.django: DjangoSupport | None = None
        if settings.enabled and config.pluginmanager.has_plugin("django"):  # pytest-django
            from pytest_dbleak.pytest_layer.django_support import DjangoSupport

            self.django = DjangoSupport(config)
            config.pluginmanager.register(self.django, "dbleak_django")
        self._resolutions: list[Resolution] = []  # what the lock watch ended or interrupted
        self._awaiting_teardown: set[str] = set()  # call passed, no teardown report yet
        self._stuck_lines: list[str] = []  # what the workers' lock watches stopped
        self._started = time.time()  # for the reports: when the run happened, how long

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def is_controller(self) -> bool:
        return self.config.pluginmanager.has_plugin("dsession")

    def _note(self, text: str) -> None:
        """A one-line remark about the run (e.g. the backend auto chose instead)."""
        line = self.redact(f"dbleak: {text}")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)
        else:
            log.warning("%s", line)

    # -- session hooks -----------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._started = time.time()
        if not self.settings.enabled:
            return
        if self.settings.baseline:
            from pytest_dbleak.reports import baseline

            try:
                self.baseline = baseline.load(self.settings.baseline)
            except DbleakError as exc:
                raise pytest.UsageError(f"dbleak: {exc}") from None
            self.recording = self.baseline is None
        try:
            if self.is_controller:
                self.runtime.server()  # one server, shared by the workers
                if self.django is not None:
                    self.django.describe(self.runtime)
            else:
                checks = self.runtime.checks()
                if self.django is not None:
                    self.django.start(self.runtime, checks.detector.kept)
        except DbleakError as exc:
            raise pytest.UsageError(f"dbleak: {exc}") from None
        self._announce_server()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        running = self.runtime.running
        if running is not None:
            node.workerinput["dbleak_server"] = {
                "backend": running.backend,
                "endpoint": self.runtime.family.endpoint_fields(running.endpoint),
            }

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Every bad marker of the run at once, one line each; a class-level mistake that
        # every method inherits is one line naming the first test and how many more.
        errors: dict[str, list[str]] = {}
        for item in items:
            values: dict[str, Any] = {}
            for name in marks.MARKERS:
                marker = item.get_closest_marker(name)
                if marker is None:
                    continue
                try:
                    values[name] = marks.validate(name, marker.args, marker.kwargs)
                except DbleakError as exc:
                    errors.setdefault(str(exc), []).append(item.nodeid)
            for text in marks.misspelt({m.name for m in item.iter_markers()}):
                errors.setdefault(text, []).append(item.nodeid)
            item.stash[MARKS] = values
        if errors:
            raise pytest.UsageError(
                *(
                    f"dbleak: {nodeids[0]}"
                    + (
                        f" (and {reporting.plural(len(nodeids) - 1, 'more test')})"
                        if len(nodeids) > 1
                        else ""
                    )
                    + f": {text}"
                    for text, nodeids in errors.items()
                )
            )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.settings.enabled:
            try:
                _pytest_seam.check(session)
            except DbleakError as exc:
                raise pytest.UsageError(f"dbleak: {exc}") from None
        # Start the server now, not inside the first test, so a bad URL or password is a
        # usage error before any test runs.
        if self.runtime.info is None and any(_uses_server(i) for i in session.items):
            try:
                self.runtime.database()
            except DbleakError as exc:
                raise pytest.UsageError(f"dbleak: {exc}") from None
            self._announce_server()

    def _announce_server(self) -> None:
        info = self.runtime.info
        if info is not None and not self._announced:
            self._announced = True
            self.config.hook.pytest_dbleak_server(config=self.config, server=info)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            self._late_at_end()

    def _late_at_end(self) -> None:
        """Threads that outlived their test may open connections after the last test: on
        an xdist worker, the controller hears of it through the worker's output."""
        detector = self.runtime.detector
        if detector is None or not self.settings.enabled:
            return
        try:
            late = detector.late_at_end(self.settings.settle_timeout)
        except ServerGoneError:
            return
        if self.is_worker:
            output = self.config.workeroutput  # type: ignore[attr-defined]
            output["dbleak_late"] = [
                {"nodeid": nodeid, "leak": leak.as_dict()} for nodeid, leak in late
            ]
            lockwatch = self.runtime.lockwatch
            # What the watch stopped (the last test's wider teardowns ran by now): the
            # controller's summary says it.
            output["dbleak_stuck"] = (
                [r.line for r in lockwatch.resolutions] if lockwatch is not None else []
            )
        for nodeid, leak in late:
            self._blame_late(nodeid, leak)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        for late in output.get("dbleak_late", ()):
            self._blame_late(late["nodeid"], Leak.from_dict(late["leak"]))
        self._stuck_lines.extend(output.get("dbleak_stuck", ()))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # pytest reports a Ctrl-C here as a raw traceback: hold it until the reports are
        # written and the server is stopped, then end the run as interrupted.
        with interrupts_held() as came:
            self._finish(session)
        if came or self.runtime.interrupted:
            session.exitstatus = pytest.ExitCode.INTERRUPTED

    def _finish(self, session: pytest.Session) -> None:
        if not self.is_worker:
            if self.settings.enabled:
                session.config.hook.pytest_dbleak_sessionfinish(
                    session=session, results=reporting.checked(self.results.values(), self.outcomes)
                )
            self._write_reports(session)
            if (
                session.exitstatus == pytest.ExitCode.TESTS_FAILED
                and self.leak_failures
                and not self.other_failures
            ) or (session.exitstatus == pytest.ExitCode.OK and self.late_failures):
                session.exitstatus = EXIT_LEAKS_FOUND
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.django is not None:
            self.django.close()
            self.config.pluginmanager.unregister(self.django)
        lockwatch = self.runtime.lockwatch
        if lockwatch is not None:
            self._resolutions = list(lockwatch.resolutions)
        # Leaked connections that sit in reference cycles would otherwise be finalised at
        # interpreter exit, after the server is gone, with noisy tracebacks. A checked run
        # without a leak has none of those.
        if not self.settings.enabled or any(r.leaks for r in self.results.values()):
            gc.collect()
        self.runtime.close()

    # -- ownership of wider-scoped fixtures ------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
        tracker = self.runtime.tracking
        if fixturedef.scope == "function" or tracker is None:
            return (yield)
        detector = self.runtime.detector
        before = detector.snapshot() if detector is not None else None
        threads = self.django.threads() if self.django is not None else None
        tracker.push_owner()
        try:
            return (yield)
        finally:
            tracker.pop_owner()
            if detector is not None and before is not None:
                detector.note_owned_server_connections(before)
            if self.django is not None and threads is not None:
                self.django.wider_fixture_done(fixturedef.argname, threads)

    # -- the check around every test ----------------------------------------------------
    # The window opens before the test's setup and closes after the last finalizer of
    # the test's own node (function fixtures, setup/teardown_method, unittest cleanups),
    # before any class, module or session finalizer: those run inside the teardown of
    # the last test of their scope, and would otherwise erase its leak (alone, -k, --lf,
    # last on an xdist worker). Wrapping hooks, not owning the protocol, keeps rerun
    # plugins, pytest-timeout and xdist in charge of what they own.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        check = self._open_window(item)
        try:
            return (yield)
        finally:
            if check is not None:
                check.placed = _pytest_seam.run_after_item_teardown(
                    item, lambda: self._close_window(item, check)
                )

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        check = item.stash.get(CHECK, None)
        if check is not None and not check.placed:
            self._close_window(item, check)  # a parent's setup failed: nothing of it ran
        interrupted = False
        try:
            return (yield)
        except (KeyboardInterrupt, pytest.exit.Exception):
            # Ctrl-C or a time limit inside a finalizer: the rest of them, the window's
            # end among them, never ran. No verdict; --lf keeps the test (see
            # pytest_keyboard_interrupt).
            interrupted = True
            raise
        finally:
            if check is not None and not check.closed and not interrupted:
                pytest.exit(f"dbleak: {_pytest_seam.misfit_message()}", returncode=3)
            detector = self.runtime.detector
            if detector is not None and (check is None or not _same_parents(item, nextitem)):
                # An unchecked test ran, or wider fixtures are torn down before the next
                # test: its window starts from a fresh snapshot, not this test's last one.
                detector.forget_baseline()

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        # Innermost wrapper: rerun plugins and reporters around it see the verdict.
        report = yield
        check = item.stash.get(CHECK, None)
        if check is None:
            return report
        if report.when == "teardown":
            self._judge(item, check, report)
        else:
            report.dbleak_checked = True  # type: ignore[attr-defined]
            check.reports.append(report)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config) -> Any:
        return self.status.status(report, config)

    def _open_window(self, item: pytest.Item) -> _Check | None:
        detector = self.runtime.detector
        if CHECK in item.stash:
            del item.stash[CHECK]
        if STRESS in item.stash:
            del item.stash[STRESS]  # a rerun counts its own stress runs
        if detector is None or not self.settings.enabled:
            return None
        item_marks = item.stash.get(MARKS, {})
        if "no_dbleak" in item_marks:
            return None  # what it leaves is nobody else's fault: see pytest_runtest_teardown
        leak_mark: marks.LeakMark = item_marks.get("dbleak") or marks.LeakMark()
        check = _Check(
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

    def _close_window(self, item: pytest.Item, check: _Check) -> None:
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
            check.result = detector.finish(
                check.window,
                item.nodeid,
                allow=check.allow,
                settle=check.settle,
                patient=check.patient,
            )
        except DbleakError as exc:  # ServerGoneError, or a SeamError from verify()
            check.gone = exc
            return
        check.result.leaks.extend(stuck)
        check.late = detector.take_late()
        if lockwatch is not None:
            for nodeid, leak in check.late:
                lockwatch.reported(leak.connection_ids, nodeid)

    def _judge(self, item: pytest.Item, check: _Check, report: pytest.TestReport) -> None:
        try:
            self._judge_check(item, check, report)
        finally:
            # The item outlives its test (pytest keeps every item): what the check held
            # (snapshots, thread sets, reports) would grow the run by kilobytes per test.
            check.window = None
            check.reports = []
            check.result = None  # the report carries it on
            if item.stash.get(CHECK, None) is check:
                del item.stash[CHECK]

    def _judge_check(self, item: pytest.Item, check: _Check, report: pytest.TestReport) -> None:
        if check.gone is not None:
            message = self.redact(f"dbleak: {check.gone}; stopping the run")
            verdict.server_gone(report, message, _location(item))
            item.session.shouldstop = message
            self.runtime.server_gone()  # no more checks against a dead server
            return
        result = check.result
        if check.late:
            # Not this test's: threads an earlier test started opened them after its
            # window closed. They travel on this report to whoever keeps the results.
            report.dbleak_late = [  # type: ignore[attr-defined]
                {"nodeid": nodeid, "leak": leak.as_dict()} for nodeid, leak in check.late
            ]
        if result is None:
            return
        if STRESS in item.stash:
            result.stress, result.runs = item.stash[STRESS]
        lockwatch = self.runtime.lockwatch
        if lockwatch is not None:
            # What this test left blocked a wider fixture's teardown after its window
            # closed, and was ended then: part of this test's verdict.
            for resolution in lockwatch.take_resolutions(item.nodeid):
                result.leaks.append(resolution.as_leak())
        result.report_only = self.settings.report_only
        if self.baseline is not None:
            self.baseline.judge(result)
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
            location=_location(item),
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
            detector.reclaim(result)

    # -- collecting results (also on the xdist controller) -------------------------------
    def pytest_keyboard_interrupt(self) -> None:
        # Interrupted inside a test's teardown (Ctrl-C, a CI job's time limit): its
        # verdict never came, so --lf must run it again.
        try:
            _pytest_seam.keep_for_last_failed(self.config, self._awaiting_teardown)
        except DbleakError as exc:
            log.warning("dbleak: %s", exc)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if report.when == "call" and getattr(report, "dbleak_checked", False):
            self._awaiting_teardown.add(nodeid)
        elif report.when == "teardown":
            self._awaiting_teardown.discard(nodeid)
        if report.when == "teardown":
            verdict.carry_section(report, self._failed_reports.pop(nodeid, None))
        elif report.failed:
            self._failed_reports[nodeid] = report
        data = getattr(report, "dbleak", None)
        if data is not None:
            self.results[nodeid] = CheckResult.from_dict(data)
            if not self.is_worker:
                # pytest keeps every report to the end of the run: the copy in results
                # is enough (a worker's report still has to travel to the controller).
                del report.dbleak
        for late in getattr(report, "dbleak_late", None) or ():
            self._blame_late(late["nodeid"], Leak.from_dict(late["leak"]))
        previous = self.outcomes.get(nodeid)
        if report.failed:
            if getattr(report, "dbleak_failed", False):
                self.leak_failures.add(nodeid)
            else:
                self.other_failures.add(nodeid)
            self.outcomes[nodeid] = "failed"
        elif report.skipped and previous != "failed":
            self.outcomes[nodeid] = "skipped"
        elif previous is None:
            self.outcomes[nodeid] = "passed"

    def _blame_late(self, nodeid: str, leak: Leak) -> None:
        """A leak opened after `nodeid` ended, by a thread it started: its own, not the
        running test's (which passes)."""
        result = self.results.get(nodeid)
        if result is None:
            result = self.results[nodeid] = CheckResult(nodeid)
            result.report_only = self.settings.report_only
        result.leaks.append(leak)
        if self.baseline is not None:
            self.baseline.judge(result)
        if result.failed:
            self.leak_failures.add(nodeid)
            self.late_failures.add(nodeid)
            self.outcomes[nodeid] = "failed"

    def pytest_report_header(self) -> list[str]:
        info = self.runtime.info
        if not self.settings.enabled or info is None or self.is_worker:
            return []
        lines = [reporting.header_line(info.backend, info.host, info.port, info.version)]
        if self.django is not None:
            lines += self.django.header()
        return [self.redact(line) for line in lines]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._baseline_line:
            terminalreporter.write_line(self.redact(self._baseline_line))
        stuck = [r.line for r in self._resolutions] + self._stuck_lines
        if stuck:
            terminalreporter.write_sep("=", "dbleak: stuck behind a leak", yellow=True)
            for line in stuck:
                terminalreporter.write_line(self.redact(f"dbleak: {line}"))
        lines = reporting.summary_lines(self.results.values())
        if lines:
            title = f"dbleak: {reporting.plural(len(lines), 'test')} leaked connections"
            terminalreporter.write_sep("=", title, yellow=True, bold=True)
            for line in lines:
                terminalreporter.write_line(self.redact(line))
        else:
            checked = reporting.checked(self.results.values(), self.outcomes)
            if self.settings.enabled and checked:
                terminalreporter.write_sep("-", reporting.clean_line(len(checked)))
        for written in self._written:  # last: where to look next
            terminalreporter.write_line(f"dbleak: {written}")

    def _write_reports(self, session: pytest.Session) -> None:
        results = list(self.results.values())
        if self.settings.baseline and self.settings.enabled:
            from pytest_dbleak.reports import (
                baseline,  # imported when asked for: a quick run never pays it
            )

            if self.recording:
                recorded = baseline.save(self.settings.baseline, results)
                self._baseline_line = baseline.recorded_line(self.settings.baseline, recorded)
            elif self.baseline is not None:
                checked = reporting.checked(results, self.outcomes)
                # A recorded test that was skipped or not run here (another shard, -k)
                # says nothing about its leak: only checked tests can call one gone.
                self._baseline_line = self.baseline.summary(checked)
                if self.baseline.gone(checked):
                    path = self.settings.baseline
                    self._baseline_line += (
                        f"; to shrink the baseline, delete {path} and run again to re-record it"
                    )
        if not (self.settings.report or self.settings.html) or not results:
            return
        meta = {
            "tool": "pytest-dbleak",
            "run": {"started": self._started, "duration": time.time() - self._started},
            "server": self._server_meta(),
            "settings": {
                "allow": self.settings.allow,
                "settle_timeout": self.settings.settle_timeout,
                "report_only": self.settings.report_only,
            },
        }
        if self.settings.report:
            reporting.write_json(
                self.settings.report,
                results,
                self.outcomes,
                meta,
                self.redact,
                leak_failed=self.leak_failures,
                other_failed=len(self.other_failures),
            )
            self._written.append(f"JSON report written to {self.settings.report}")
        if self.settings.html:
            from pytest_dbleak.reports import html as html_report

            html_report.write(
                self.settings.html,
                results,
                self.outcomes,
                meta,
                self.redact,
                leak_failed=self.leak_failures,
            )
            self._written.append(f"HTML report written to {self.settings.html}")

    def _server_meta(self) -> dict[str, Any]:
        info = self.runtime.info
        if info is None:
            return {}
        return {
            "backend": info.backend,
            "host": info.host,
            "port": info.port,
            "version": info.version,
        }


def _location(item: pytest.Item) -> tuple[str, int]:
    return item.location[0], (item.location[1] or 0) + 1


def _same_parents(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether the next test shares every collector with this one (so no wider fixture
    is torn down between the two)."""
    return nextitem is not None and nextitem.listchain()[:-1] == item.listchain()[:-1]


def _uses_server(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n in names for n in ("dbleak_mysql_url", "dbleak_server", "dbleak"))
