"""The server, the session database and the leak checks of one run, each built whole.

No pytest import. The manager asks for what a hook needs - ``server()``, ``database()``
or ``checks()`` - and gets either the whole thing or one ``DbleakError``, the same on
every later call: there is no half-started state to test for.
"""

from __future__ import annotations

import importlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dbleak.engine.database import Database
from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.engine.signals import interrupt_deferred, interrupts_held, sigterm_as_interrupt
from pytest_dbleak.families.base import Family, Launch, RunningServer, ServerInfo, ServerMonitor

if TYPE_CHECKING:
    from pytest_dbleak.engine.detector import Detector
    from pytest_dbleak.engine.lockwatch import LockWatch
    from pytest_dbleak.engine.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Server:
    """A server that answers: what runs it, our admin connection to it, its facts."""

    running: RunningServer
    monitor: ServerMonitor
    info: ServerInfo

    @property
    def shared_with_others(self) -> bool:
        """Not ours alone (the url backend, or the controller's on an xdist worker)."""
        return not self.running.owned


@dataclass(frozen=True)
class Checks:
    """Everything a leak check needs, on top of a Server."""

    database: Database
    tracker: Tracker
    detector: Detector
    lockwatch: LockWatch | None


class Runtime:
    def __init__(
        self,
        settings: Settings,
        redact: Redactor,
        family: Family,
        *,
        worker: str,
        shared: dict[str, Any] | None,
        root: Path,
        note: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.redact = redact
        self.family = family
        self.worker = worker  # "main", or the xdist worker id
        self._shared = shared  # an xdist worker: the controller's server (of its family)
        self._tracker: Tracker | None = None  # family-neutral: kept when the family changes
        self._root = root
        self._note = note
        self._launched: Launch | None = None
        self._server: Server | None = None
        self._database: Database | None = None
        self._checks: Checks | None = None
        self._error: DbleakError | None = None
        self._server_gone = False
        self._undo_sigterm: Callable[[], None] = lambda: None
        self.interrupted = False  # Ctrl-C or SIGTERM came while close() held it back

    # -- what the hooks ask for ---------------------------------------------------
    @property
    def info(self) -> ServerInfo | None:
        return self._server.info if self._server is not None else None

    @property
    def running(self) -> RunningServer | None:
        return self._server.running if self._server is not None else None

    @property
    def detector(self) -> Detector | None:
        """The detector while checks run; None before, and after the server died."""
        if self._checks is None or self._server_gone:
            return None
        return self._checks.detector

    @property
    def lockwatch(self) -> LockWatch | None:
        return self._checks.lockwatch if self._checks is not None else None

    @property
    def tracking(self) -> Tracker | None:
        return self._checks.tracker if self._checks is not None else None

    @property
    def started(self) -> bool:
        """A server was asked for (launched, running, or failed to start)."""
        return any(x is not None for x in (self._launched, self._server, self._error))

    def switch(self, family: Family) -> None:
        """Serve `family` instead: what was started for the other one is stopped (its
        error forgotten); the tracker, which knows no family, stays. Only before the
        first test's check: a check never spans two servers."""
        if family is self.family:
            return
        log.info("dbleak: %s instead of %s", family.title, self.family.title)
        self.close(keep_tracker=True)
        self._error = None
        self.family = family

    def sibling(self, family: Family) -> Runtime:
        """A runtime of another family for this process (an xdist controller serving a
        family its prediction missed), with the same settings and redaction."""
        return Runtime(
            self.settings,
            self.redact,
            family,
            worker=self.worker,
            shared=None,
            root=self._root,
            note=self._note,
        )

    @property
    def shared_family(self) -> str | None:
        """The family of the controller's server this xdist worker was given, if any."""
        return None if self._shared is None else str(self._shared.get("family", "mysql"))

    def share(self, fields: dict[str, Any]) -> None:
        """Use the controller's server (``Broker``'s answer) instead of starting one."""
        if self.started:
            raise DbleakError("a server was already started for this session")
        self._shared = fields

    def _shared_server(self) -> dict[str, Any] | None:
        """The controller's server, when it is of this runtime's family."""
        shared = self._shared
        if shared is None or shared.get("family", "mysql") != self.family.name:
            return None
        return shared

    def tracker(self) -> Tracker:
        """The pool-event tracker, installed once; it needs no server."""
        if self._tracker is None:
            with interrupt_deferred():
                from pytest_dbleak.engine import detector, lockwatch, tracking  # noqa: F401 - imported whole
            from pytest_dbleak.engine.tracking import Tracker

            tracker = Tracker()
            tracker.install()
            self._tracker = tracker
        return self._tracker

    def launch(self) -> None:
        """Set the server off (once), so that it boots while other work goes on."""
        shared = self._shared_server()
        if shared is not None or self._server is not None or self._error is not None:
            return
        if self._launched is None:
            try:
                self._launched = self.family.launch(self.settings, self.redact)
            except DbleakError as exc:
                self._error = DbleakError(self.redact(str(exc)))

    def server(self) -> Server:
        """Start or reach the server once; the same error on every later call."""
        if self._error is not None:
            raise self._error
        if self._server is None:
            try:
                self._server = self._start()
            except DbleakError as exc:
                self._error = DbleakError(self.redact(str(exc)))
                self.close()
                raise self._error from None
        return self._server

    def database(self) -> Database:
        """The database and user that belong to this session (or xdist worker)."""
        if self._database is None:
            server = self.server()
            try:
                self._database = self._create_database(server)
            except DbleakError as exc:
                self._error = exc
                raise
        return self._database

    def checks(self) -> Checks:
        """Server, session database, tracker, detector and lock watch."""
        if self._checks is None:
            self.launch()  # the server boots while SQLAlchemy imports below
            with interrupt_deferred():
                importlib.import_module(self.family.admin_driver)  # the server's wait needs it
            try:
                return self._build_checks(self.tracker())
            except BaseException:
                # Ctrl-C while the server starts too: the tracker's folder must not stay.
                with interrupts_held():
                    tracker, self._tracker = self._tracker, None
                    if tracker is not None:
                        tracker.uninstall()
                raise
        return self._checks

    def _build_checks(self, tracker: Tracker) -> Checks:
        from pytest_dbleak.engine.detector import Detector

        database = self.database()
        server = self.server()
        own_everything = not server.shared_with_others
        users = None if own_everything else frozenset({database.user})
        detector = Detector(tracker, server.monitor, users, self._root)
        lockwatch = None
        if self.settings.lock_wait > 0:
            from pytest_dbleak.engine.lockwatch import LockWatch

            watch = self.family.monitor(server.running, server.monitor.own_ids)
            lockwatch = LockWatch(watch, users, tracker, self._root, self.settings.lock_wait)
        self._checks = Checks(database, tracker, detector, lockwatch)
        return self._checks

    def allow_databases_named_after_session(self) -> str:
        """Let the session's user create and drop ``<session database>_*`` databases (a
        framework's test databases); they are dropped with the session's. The prefix."""
        database = self.database()
        server = self.server()
        try:
            server.monitor.grant_named_after(database.name, database.user, "%")
        except Exception as exc:  # noqa: BLE001 - report any refusal as one line
            raise DbleakError(
                self.redact(
                    f"cannot let {database.user} create test databases on "
                    f"{server.running.where}: {exc}"
                )
            ) from None
        return f"{database.name}_"

    def server_gone(self) -> None:
        """No more checks: the server stopped answering."""
        self._server_gone = True

    # -- building ---------------------------------------------------------------------
    def _start(self) -> Server:
        shared = self._shared_server()
        if shared is not None:
            running = RunningServer(
                shared["backend"],
                self.family.endpoint(shared["endpoint"]),
                owned=False,
            )
        else:
            self.launch()
            if self._error is not None:
                raise self._error
            assert self._launched is not None
            launched, self._launched = self._launched, None
            running = launched.wait()
        try:
            monitor = self.family.monitor(running)
        except BaseException:
            running.stop()
            raise
        self.redact.add(running.endpoint.password)
        for note in running.notes:
            self._note(note)
        return Server(running, monitor, self.family.describe(running, monitor.version))

    def _create_database(self, server: Server) -> Database:
        tag = "".join(c for c in self.worker if c.isalnum())[:8]
        name = f"dbleak_{tag}_{secrets.token_hex(3)}"
        password = secrets.token_hex(16)
        self.redact.add(password)
        monitor = server.monitor
        try:
            # On a server others use: hold the session's lock first, then remove what
            # killed runs left (their locks are free), then create ours.
            monitor.claim(name)
            if server.shared_with_others:
                for swept in monitor.sweep_orphans():
                    log.info("dbleak: removed %s, left by a run that was killed", swept)
            self._undo_sigterm = sigterm_as_interrupt()  # so a cancelled CI job drops it
            monitor.create_database(name, name, password, "%")
        except Exception as exc:  # noqa: BLE001 - report any refusal as one line
            raise DbleakError(
                self.redact(f"cannot create the session database on {server.running.where}: {exc}")
            ) from None
        return self.family.database(
            name,
            name,
            password,
            server.info.host,
            server.info.port,
            local=server.running.endpoint.is_local,
        )

    # -- the end ------------------------------------------------------------------------
    def close(self, *, keep_tracker: bool = False) -> None:
        """Stop what was started; drop what we created on a server that stays. Idempotent.

        Ctrl-C is held back until everything is stopped and removed (``interrupted``
        says it came); every step runs even if an earlier one fails.
        """
        with interrupts_held() as came:
            try:
                self._close(keep_tracker)
            finally:
                self.interrupted = self.interrupted or bool(came)

    def _close(self, keep_tracker: bool) -> None:
        launched, self._launched = self._launched, None
        checks, server, database = self._checks, self._server, self._database
        self._checks = self._server = self._database = None
        try:
            if launched is not None:  # set off, never waited for
                launched.cancel()
            if checks is not None and checks.lockwatch is not None:
                checks.lockwatch.close()
        finally:
            try:
                if server is not None:
                    self._release(server, database)
            finally:
                tracker = self._tracker
                if tracker is not None and not keep_tracker:
                    self._tracker = None
                    tracker.uninstall()
                self._undo_sigterm()
                self._undo_sigterm = lambda: None

    def _release(self, server: Server, database: Database | None) -> None:
        # A server we started goes away whole; on anybody else's, drop what we created.
        try:
            if database is not None and server.shared_with_others:
                try:
                    server.monitor.drop_database(database.name, database.user, "%")
                except Exception as exc:  # noqa: BLE001 - best effort at the very end
                    log.warning("dbleak: could not drop %s: %s", database.name, exc)
            server.monitor.close()
        finally:
            server.running.stop()
