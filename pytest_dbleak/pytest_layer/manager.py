"""The one object that owns a run's state: its Runtime (server, database, checks),
each test's check, and the results.

Registered by plugin.py in ``pytest_configure`` and reachable through
``config.stash[MANAGER]``; every hook that needs state is a method here. Each test's
check (its window, its one result) is checks.py's; what a report says is verdict.py's;
what the run says at its end, session_report.py's; how it reads, reporting.py's.

Data flows one way: the manager (and its checks) write the item's stash keys; the
fixtures only read them, and tell the manager of stress runs through a call
(``checks.count_runs``).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbleak import families
from pytest_dbleak.engine.errors import DbleakError, Redactor, ServerGoneError
from pytest_dbleak.engine.results import CheckResult, Leak
from pytest_dbleak.engine.runtime import Runtime
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.engine.signals import interrupts_held
from pytest_dbleak.families.base import ServerInfo
from pytest_dbleak.pytest_layer import _pytest_seam, family_choice, marks, session_report, verdict
from pytest_dbleak.pytest_layer.checks import CHECK, MARKS, Checks
from pytest_dbleak.reports import reporting

if TYPE_CHECKING:
    from pytest_dbleak.engine.lockwatch import Resolution
    from pytest_dbleak.pytest_layer.django_support import DjangoSupport
    from pytest_dbleak.reports.baseline import Baseline

log = logging.getLogger(__name__)

MANAGER = pytest.StashKey["DbleakManager"]()
# Exit status when the only failures are leaks, so CI can tell them from broken tests.
EXIT_LEAKS_FOUND = 6


class DbleakManager:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.redact = Redactor()
        workerinput = getattr(config, "workerinput", {})
        # The family is chosen at the session's start and again after collection (see
        # family_choice); MySQL until then.
        self.runtime = Runtime(
            settings,
            self.redact,
            families.get("mysql"),
            worker=workerinput.get("workerid", "main"),
            shared=workerinput.get("dbleak_server"),
            root=config.rootpath,
            note=self._note,
        )
        self._header_shown: ServerInfo | None = None  # the server pytest's header named
        self.checks = Checks(self.runtime, settings, self.redact)
        self.choice = family_choice.FamilyChoice(
            self.runtime,
            settings,
            broker_path=workerinput.get("dbleak_broker"),
            mysql_required=lambda: self.django is not None and self.django.uses_mysql(),
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
        self._announced: ServerInfo | None = None  # the server pytest_dbleak_server named
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
    def tested_runtime(self) -> Runtime:
        """Whose server the reports describe."""
        return self.choice.tested()

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
            if self.baseline is not None:
                self.checks.knows = self.baseline.knows
        cache = getattr(self.config, "cache", None)
        predicted = self.choice.predict(
            worker=self.is_worker,
            remembered=cache.get(family_choice.CACHE_KEY, None) if cache is not None else None,
        )
        try:
            if self.is_controller:
                self.choice.open_broker()  # its path goes to each worker
                if predicted is not None:  # one server for the workers
                    self.choice.start_predicted(predicted, self.runtime.server)
                if self.django is not None:
                    self.django.describe(self.runtime)
            else:
                if predicted is not None:  # the server boots while SQLAlchemy imports
                    self.choice.start_predicted(predicted, self.runtime.checks)
                    if self.django is not None and self.runtime.detector is not None:
                        self.django.start(self.runtime, self.runtime.checks().detector.kept)
                self.runtime.tracker()  # pool events from the start, whatever the family
        except DbleakError as exc:
            raise pytest.UsageError(f"dbleak: {exc}") from None
        if self.settings.family != "auto":
            self._announce_server()  # else once collection confirmed the prediction

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.choice.broker is not None:
            node.workerinput["dbleak_broker"] = self.choice.broker.path
        running = self.runtime.running
        if running is not None:
            node.workerinput["dbleak_server"] = {
                "family": self.runtime.family.name,
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
        # The family the tests request, its server started now (not inside the first
        # test), so that a bad URL or password is a usage error before any test runs.
        try:
            chosen = self.choice.serve(session.items, checked=self.settings.enabled)
            if chosen is not None and self.is_worker:
                self.config.workeroutput["dbleak_family"] = chosen  # type: ignore[attr-defined]
        except DbleakError as exc:
            raise pytest.UsageError(f"dbleak: {exc}") from None
        self._announce_server(late=True)

    def _announce_server(self, *, late: bool = False) -> None:
        """Call pytest_dbleak_server for the session's server, once per server: after
        collection, a wrong prediction's server was replaced by the one the tests need."""
        info = self.tested_runtime.info
        if info is None or info is self._announced:
            return
        self._announced = info
        if (
            late
            and self._header_shown is not info
            and self.settings.enabled
            and not self.is_worker
            and not self.config.getoption("no_header", False)
        ):
            # Started after pytest's header was written: the same line, now.
            self._header_shown = info
            line = reporting.header_line(info.backend, info.host, info.port, info.version)
            self._note(line.removeprefix("dbleak: "))
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
        self.choice.from_tests = output.get("dbleak_family", self.choice.from_tests)
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
            self._remember_family()
            self._announce_server()  # the xdist controller's: it never collects
            session_report.write_reports(self)
            if (
                session.exitstatus == pytest.ExitCode.TESTS_FAILED
                and self.leak_failures
                and not self.other_failures
            ) or (session.exitstatus == pytest.ExitCode.OK and self.late_failures):
                session.exitstatus = EXIT_LEAKS_FOUND
        self.close()

    def _remember_family(self) -> None:
        """The family the tests requested: the next run starts it before collection."""
        cache = getattr(self.config, "cache", None)
        if cache is not None and self.choice.from_tests is not None:
            cache.set(family_choice.CACHE_KEY, self.choice.from_tests)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.choice.close()
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
        check = self.checks.open(item)
        try:
            return (yield)
        finally:
            if check is not None:
                self.checks.placed_after_teardown(item, check)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        check = item.stash.get(CHECK, None)
        if check is not None and not check.placed:
            self.checks.close(item, check)  # a parent's setup failed: nothing of it ran
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
            self.checks.judge(item, check, report)
        else:
            report.dbleak_checked = True  # type: ignore[attr-defined]
            check.reports += (report,)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(
        self, report: pytest.TestReport, config: pytest.Config
    ) -> Generator[None, Any, Any]:
        # The status the other implementations give, adjusted: a checked test's passing
        # call is shown through its teardown report (see verdict.DeferredStatus).
        return self.status.adjust(report, (yield))

    @pytest.hookimpl(wrapper=True)
    def pytest_report_to_serializable(
        self, config: pytest.Config, report: Any
    ) -> Generator[None, Any, Any]:
        # xdist (or a report log) sends the report on: the result goes as its dict.
        return verdict.to_serializable(report, (yield))

    @pytest.hookimpl(wrapper=True)
    def pytest_report_from_serializable(
        self, config: pytest.Config, data: Any
    ) -> Generator[None, Any, Any]:
        # The controller's copy of a worker's report: the result made again from its dict.
        return verdict.from_serializable((yield))

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
        result = getattr(report, "dbleak", None)
        if isinstance(result, CheckResult):
            self.results[nodeid] = result
        for late_nodeid, leak in getattr(report, "dbleak_late", None) or ():
            self._blame_late(late_nodeid, leak)
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
        result = self.results.get(nodeid) or CheckResult(
            nodeid, report_only=self.settings.report_only
        )
        # Found after its result was made: a new result in its place (results are frozen).
        result = self.results[nodeid] = result.adding([leak], known=self.checks.knows)
        if result.failed:
            self.leak_failures.add(nodeid)
            self.late_failures.add(nodeid)
            self.outcomes[nodeid] = "failed"

    def pytest_report_header(self) -> list[str]:
        info = self.runtime.info
        if not self.settings.enabled or info is None or self.is_worker:
            return []
        self._header_shown = info
        lines = [reporting.header_line(info.backend, info.host, info.port, info.version)]
        if self.django is not None:
            lines += self.django.header()
        return [self.redact(line) for line in lines]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        session_report.terminal_summary(self, terminalreporter)


def _same_parents(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether the next test shares every collector with this one (so no wider fixture
    is torn down between the two)."""
    return nextitem is not None and nextitem.listchain()[:-1] == item.listchain()[:-1]
