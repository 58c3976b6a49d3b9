"""The one object that owns a run's state: server, tracker, detector, results.

Registered by plugin.py in ``pytest_configure`` and reachable through
``config.stash[MANAGER]``; every hook that needs state is a method here.
"""

from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTracebackNative
from _pytest.runner import runtestprotocol

from . import backends, marks, reporting
from .backends import RunningServer, ServerInfo
from .errors import DbleakError, Redactor, ServerGoneError
from .probe import Endpoint, Monitor
from .results import CheckResult
from .settings import Settings
from .signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from .baseline import Baseline
    from .detector import Detector
    from .tracking import Tracker

log = logging.getLogger(__name__)

MANAGER = pytest.StashKey["DbleakManager"]()
# Exit status when the only failures are leaks, so CI can tell them from broken tests.
EXIT_LEAKS_FOUND = 6
MARKS = pytest.StashKey[dict[str, Any]]()  # validated marker values of an item
STRESS = pytest.StashKey[tuple[str, int]]()  # (stress kind, runs) set by stress fixtures


@dataclass(frozen=True)
class SessionDatabase:
    """The database and user that belong to this session (or xdist worker)."""

    name: str
    user: str
    password: str
    url: str


class DbleakManager:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.redact = Redactor()
        self._tracker: Tracker | None = None
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.results: dict[str, CheckResult] = {}
        self.outcomes: dict[str, str] = {}
        self.leak_failures: set[str] = set()  # failed because of a leak only
        self.other_failures: set[str] = set()
        self._server: RunningServer | None = None
        self._launched: backends.Launch | None = None
        self._server_error: DbleakError | None = None
        self.monitor: Monitor | None = None
        self.info: ServerInfo | None = None
        self.database: SessionDatabase | None = None
        self.detector: Detector | None = None
        self.baseline: Baseline | None = None
        self.recording = False  # --dbleak-baseline names a file that does not exist yet
        self._baseline_line = ""
        self._closed = False
        self._undo_sigterm: Callable[[], None] = lambda: None

    @property
    def tracker(self) -> Tracker:
        # Imported on first use: SQLAlchemy costs ~0.15 s to import, and a run that never
        # touches a database should not pay it.
        if self._tracker is None:
            from .tracking import Tracker

            self._tracker = Tracker()
        return self._tracker

    # -- lifecycle of the server -------------------------------------------------------
    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def is_controller(self) -> bool:
        return self.config.pluginmanager.has_plugin("dsession")

    def ensure_server(self) -> ServerInfo:
        """Start or reach the server once; the same error on every later call."""
        if self._server_error is not None:
            raise self._server_error
        if self.info is not None:
            return self.info
        try:
            server = self._start_server()
            self._server = server
            try:
                self.monitor = Monitor(server.endpoint, server.where)
            except Exception as exc:  # noqa: BLE001 - PyMySQL raises several types here
                raise backends.connect_error(server, exc) from None
            self.info = backends.describe(server, self.monitor.version)
            self.redact.add(server.endpoint.password)
            for note in server.notes:
                self._note(note)
        except DbleakError as exc:
            self._server_error = DbleakError(self.redact(str(exc)))
            self._release_server()
            raise self._server_error from None
        return self.info

    def _note(self, text: str) -> None:
        """A one-line remark about the run (e.g. the backend auto chose instead)."""
        line = self.redact(f"dbleak: {text}")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)
        else:
            log.warning("%s", line)

    def _start_server(self) -> RunningServer:
        shared = getattr(self.config, "workerinput", {}).get("dbleak_server")
        if shared:  # an xdist worker uses the controller's server
            return RunningServer(shared["backend"], Endpoint(**shared["endpoint"]), owned=False)
        launched = self._launch()
        self._launched = None
        return launched.wait()

    def _launch(self) -> backends.Launch:
        """Set the server off (once); ensure_server() waits for it."""
        if self._launched is None:
            s = self.settings
            self._launched = backends.launch(
                s.backend, mysql_url=s.mysql_url, mysqld=s.mysqld, image=s.image,
                cache=s.template_cache, timeout=s.startup_timeout, redactor=self.redact,
            )
        return self._launched

    def ensure_database(self) -> SessionDatabase:
        if self.database is not None:
            return self.database
        info = self.ensure_server()
        assert self.monitor is not None
        assert self._server is not None
        tag = "".join(c for c in self.worker if c.isalnum())[:8]
        name = f"dbleak_{tag}_{secrets.token_hex(3)}"
        password = secrets.token_hex(16)
        self.redact.add(password)
        try:
            # On a server others use: hold the session's lock first, then remove what
            # killed runs left (their locks are free), then create ours.
            self.monitor.claim(name)
            if not self._server.owned:
                for swept in self.monitor.sweep_orphans():
                    log.info("dbleak: removed %s, left by a run that was killed", swept)
            self._undo_sigterm = sigterm_as_interrupt()  # so a cancelled CI job drops it
            self.monitor.create_database(name, name, password, "%")
        except Exception as exc:  # noqa: BLE001 - report any refusal as one line
            raise DbleakError(self.redact(
                f"cannot create the session database on {self._server.where}: {exc}"
            )) from None
        from sqlalchemy.engine import URL

        query = {"charset": "utf8mb4"}
        if self._server.endpoint.is_local:
            query["ssl_disabled"] = "true"  # PyMySQL >= 1.2: no SSL context per connect
        url = URL.create(
            "mysql+pymysql", username=name, password=password, host=info.host,
            port=info.port, database=name, query=query,
        ).render_as_string(hide_password=False)
        self.database = SessionDatabase(name, name, password, url)
        return self.database

    def ensure_checks(self) -> Detector:
        """Server, session database, tracker and detector: all a leak check needs."""
        if self.detector is None:
            if self.info is None and self._server_error is None and not self.is_worker:
                try:
                    self._launch()  # mariadbd boots while SQLAlchemy imports below
                except DbleakError as exc:
                    self._server_error = DbleakError(self.redact(str(exc)))
            self.tracker.install()
            db = self.ensure_database()
            assert self.monitor is not None
            assert self._server is not None
            own_everything = self._server.owned and not self.is_worker
            users = None if own_everything else frozenset({db.user})
            from .detector import Detector

            self.detector = Detector(self.tracker, self.monitor, users, self.config.rootpath)
        return self.detector

    def _release_server(self) -> None:
        if self._launched is not None:  # set off, never waited for
            self._launched.cancel()
            self._launched = None
        server = self._server
        # A server we started goes away whole; on anybody else's, drop what we created.
        disposable = server is not None and server.owned and not self.is_worker
        if self.monitor is not None and self.database is not None and not disposable:
            try:
                self.monitor.drop_database(self.database.name, self.database.user, "%")
            except Exception as exc:  # noqa: BLE001 - best effort at the very end
                log.warning("dbleak: could not drop %s: %s", self.database.name, exc)
        if self.monitor is not None:
            self.monitor.close()
        if self._server is not None:
            self._server.stop()
        self._undo_sigterm()
        self.monitor, self._server, self.detector, self.database = None, None, None, None

    # -- session hooks -----------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.settings.enabled:
            return
        if self.settings.baseline:
            from . import baseline

            try:
                self.baseline = baseline.load(self.settings.baseline)
            except DbleakError as exc:
                raise pytest.UsageError(f"dbleak: {exc}") from None
            self.recording = self.baseline is None
        try:
            if self.is_controller:
                self.ensure_server()  # one server, shared by the workers
            else:
                self.ensure_checks()
        except DbleakError as exc:
            raise pytest.UsageError(f"dbleak: {exc}") from None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self._server is not None:
            ep = self._server.endpoint
            node.workerinput["dbleak_server"] = {
                "backend": self._server.backend,
                "endpoint": {"host": ep.host, "port": ep.port, "user": ep.user,
                             "password": ep.password, "unix_socket": ep.unix_socket},
            }

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            values: dict[str, Any] = {}
            for name in marks.MARKERS:
                marker = item.get_closest_marker(name)
                if marker is None:
                    continue
                try:
                    values[name] = marks.validate(name, marker.args, marker.kwargs)
                except DbleakError as exc:
                    raise pytest.UsageError(f"dbleak: {item.nodeid}: {exc}") from None
            item.stash[MARKS] = values

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # Start the server now, not inside the first test, so a bad URL or password is a
        # usage error before any test runs.
        if self.info is None and any(_uses_server(i) for i in session.items):
            try:
                self.ensure_database()
            except DbleakError as exc:
                raise pytest.UsageError(f"dbleak: {exc}") from None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.is_worker:
            self._write_reports(session)
            if (session.exitstatus == pytest.ExitCode.TESTS_FAILED and self.leak_failures
                    and not self.other_failures):
                session.exitstatus = EXIT_LEAKS_FOUND
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Leaked connections that sit in reference cycles would otherwise be finalised at
        # interpreter exit, after the server is gone, with noisy tracebacks. A checked run
        # without a leak has none of those.
        if not self.settings.enabled or any(r.leaks for r in self.results.values()):
            gc.collect()
        self._release_server()
        if self._tracker is not None:
            self._tracker.uninstall()

    # -- ownership of wider-scoped fixtures ------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function" or self._tracker is None or not self._tracker.installed:
            return (yield)
        detector = self.detector
        before = detector.snapshot() if detector is not None else None
        self.tracker.push_owner()
        try:
            return (yield)
        finally:
            self.tracker.pop_owner()
            if detector is not None and before is not None:
                detector.note_owned_server_connections(before)

    # -- the check around every test ----------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        detector = self.detector
        if detector is None or not self.settings.enabled:
            return None
        item_marks = item.stash.get(MARKS, {})
        ihook = item.ihook
        if "no_dbleak" in item_marks:
            ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=nextitem, log=True)
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            detector.forget_baseline()  # what this test left is nobody else's fault
            return True
        leak_mark: marks.LeakMark = item_marks.get("dbleak") or marks.LeakMark()
        allow = self.settings.allow if leak_mark.allow is None else leak_mark.allow
        settle = self.settings.settle_timeout if leak_mark.settle is None else leak_mark.settle

        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        gone: ServerGoneError | None = None
        try:
            window = detector.begin(reuse=True)
        except ServerGoneError as exc:
            gone, window = exc, None
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        result: CheckResult | None = None
        if window is not None:
            try:
                result = detector.finish(window, item.nodeid, allow=allow, settle=settle)
            except ServerGoneError as exc:
                gone = exc
        if gone is not None:
            self._server_gone(item, reports, gone)
        elif result is not None:
            if STRESS in item.stash:
                result.stress, result.runs = item.stash[STRESS]
            result.report_only = self.settings.report_only
            if self.baseline is not None:
                self.baseline.judge(result)
            self._apply(item, result, reports)
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _apply(
        self, item: pytest.Item, result: CheckResult, reports: list[pytest.TestReport]
    ) -> None:
        # The call report; without one (setup failed or skipped), the failed setup report,
        # so that one test stays one entry in the summary.
        target = next((r for r in reports if r.when == "call"), None) or next(
            (r for r in reports if r.failed), reports[-1]
        )
        target.dbleak = result.as_dict()  # type: ignore[attr-defined]  # travels with xdist
        if not result.leaks:
            return
        # JUnit XML reads the properties from the teardown report; keep them on both.
        for report in {id(r): r for r in (target, reports[-1])}.values():
            report.user_properties.append(("dbleak_leaked", result.leaked))
        details = self.redact(reporting.section_text(result))
        text = self.redact(reporting.failure_text(result))
        if not result.failed or target.failed:
            # The test failed on its own (keep its error) or the leak is tolerated.
            target.sections.append((reporting.SECTION, text + "\n" + details))
            return
        target.sections.append((reporting.SECTION, details))
        target.outcome = "failed"
        if hasattr(target, "wasxfail"):
            del target.wasxfail
        site = next((leak.site for leak in result.leaks if leak.site), None)
        path, line = (site.file, site.line) if site else _location(item)
        target.longrepr = ReprExceptionInfo(
            reprtraceback=ReprTracebackNative([text]),
            reprcrash=ReprFileLocation(path, line, self.redact(reporting.headline(result))),
        )
        for report in {id(r): r for r in (target, reports[-1])}.values():
            report.user_properties.append(("dbleak_failed", True))

    def _server_gone(
        self, item: pytest.Item, reports: list[pytest.TestReport], exc: ServerGoneError
    ) -> None:
        message = self.redact(f"dbleak: {exc}; stopping the run")
        target = reports[-1]
        if not target.failed:
            target.outcome = "failed"
            target.longrepr = ReprExceptionInfo(
                reprtraceback=ReprTracebackNative([message + "\n"]),
                reprcrash=ReprFileLocation(*_location(item), message),
            )
        item.session.shouldstop = message
        self.detector = None  # no more checks against a dead server

    # -- collecting results (also on the xdist controller) -------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "dbleak", None)
        if data is not None:
            self.results[report.nodeid] = CheckResult.from_dict(data)
        previous = self.outcomes.get(report.nodeid)
        if report.failed:
            if ("dbleak_failed", True) in report.user_properties:
                self.leak_failures.add(report.nodeid)
            else:
                self.other_failures.add(report.nodeid)
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped and previous != "failed":
            self.outcomes[report.nodeid] = "skipped"
        elif previous is None:
            self.outcomes[report.nodeid] = "passed"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._baseline_line:
            terminalreporter.write_line(self.redact(self._baseline_line))
        lines = reporting.summary_lines(self.results.values())
        if not lines:
            if self.settings.enabled and self.results:
                terminalreporter.write_sep("-", f"dbleak: no leaks in {len(self.results)} tests")
            return
        title = f"dbleak: {reporting.plural(len(lines), 'test')} leaked connections"
        terminalreporter.write_sep("=", title, yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(self.redact(line))

    def _write_reports(self, session: pytest.Session) -> None:
        from . import baseline, html_report

        results = list(self.results.values())
        if self.settings.baseline and self.settings.enabled:
            if self.recording:
                recorded = baseline.save(self.settings.baseline, results)
                self._baseline_line = baseline.recorded_line(self.settings.baseline, recorded)
            elif self.baseline is not None:
                self._baseline_line = self.baseline.summary(results)
        if not (self.settings.report or self.settings.html) or not results:
            return
        meta = {"tool": "pytest-dbleak", "server": self._server_meta(), "settings": {
            "allow": self.settings.allow, "settle_timeout": self.settings.settle_timeout,
            "report_only": self.settings.report_only,
        }}
        if self.settings.report:
            reporting.write_json(self.settings.report, results, self.outcomes, meta, self.redact)
        if self.settings.html:
            html_report.write(self.settings.html, results, self.outcomes, meta, self.redact)

    def _server_meta(self) -> dict[str, Any]:
        if self.info is None:
            return {}
        return {"backend": self.info.backend, "host": self.info.host, "port": self.info.port,
                "version": self.info.version}


def _location(item: pytest.Item) -> tuple[str, int]:
    return item.location[0], (item.location[1] or 0) + 1


def _uses_server(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n in names for n in ("dbleak_mysql_url", "dbleak_server", "dbleak"))
