"""pytest-django projects under ``--dbleak``: no configuration, Django's connection model.

No pytest import. The manager registers one ``DjangoSupport`` as a plugin when
pytest-django is active and the run is checked; without ``--dbleak`` Django is left alone.

- **Redirect.** Every alias whose backend is MySQL-family (``vendor == "mysql"``) is pointed
  at the session's database, before pytest-django's ``django_db_setup`` creates the test
  databases. Each alias's test database is named ``<session database>_<alias>`` (pytest-django
  appends ``_gwN`` under xdist): the session's user may create and drop exactly the
  databases with that prefix, and they are dropped, or swept after a killed run, with the
  session's own. Other aliases (SQLite, ...) are left as they are.
- **Connections Django keeps.** Django opens one connection per thread and alias, lazily,
  and keeps it for that thread. Only a thread the test started makes the test's leak.
  The connections of the main thread (reopened by the next test after a transactional
  test closed them), of the live server's threads, of asgiref's thread for async ORM
  calls and of threads running before the test began (a wider fixture's worker) are
  kept for reuse while their thread lives: the detector is given them as kept
  connections. A connection a thread the test started left open is the test's leak; its
  wrapper is held until the test is judged, so that the garbage collector closing it
  after its thread ended cannot hide it.
- **pytest-django's blocker** swaps ``ensure_connection`` on the shared base class: every
  thread is blocked once the test's ``db`` fixture is torn down. A leaked thread that goes
  on using the ORM would die of ``RuntimeError: Database access not allowed`` and its leak
  would be lost with it. On the redirected backends the blocker applies to the test's own
  thread; other threads' connections are judged by the leak check.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dbleak.engine import _django_seam
from pytest_dbleak.engine.drivers import server_thread_id
from pytest_dbleak.engine.errors import DbleakError

if TYPE_CHECKING:
    from pytest_dbleak.engine.runtime import Runtime

log = logging.getLogger(__name__)

# OPTIONS that would point a connection somewhere else or log in as someone else.
_TARGET_OPTIONS = frozenset(
    {
        "read_default_file",
        "read_default_group",
        "host",
        "port",
        "user",
        "passwd",
        "password",
        "db",
        "database",
        "unix_socket",
        "named_pipe",
        "ssl",
        "ssl_mode",
        "ssl_disabled",
    }
)


@dataclass
class _Opened:
    """A connection Django opened for one thread and alias."""

    wrapper: weakref.ref[Any]
    thread: weakref.ref[threading.Thread]
    kept: bool  # for a thread the test did not start, while it lives: not the test's
    held: Any = None  # the wrapper itself, until the test that opened it is judged


class DjangoSupport:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.main = threading.current_thread()  # the thread that runs the tests
        self.redirected: list[str] = []
        self.left: list[str] = []
        self._target = ""
        self._prefix = ""
        self._tags: dict[str, str] = {}
        self._opened: dict[int, _Opened] = {}
        self._lock = threading.Lock()
        self._patched: list[type] = []
        self._kept_threads: _django_seam.KeptThreads | None = None
        self._before: set[threading.Thread] = set()  # running when the current test began
        # Started by a wider-scoped fixture's setup (a session's worker): not the test's.
        self._wider: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._listening = False

    # -- the start --------------------------------------------------------------------
    def describe(self, runtime: Runtime) -> None:
        """What a run redirects, for the header (the xdist controller: no database)."""
        self._sort_aliases()
        info = runtime.info
        if self.redirected and info is not None:
            self._target = f"each worker's session database on {info.host}:{info.port}"

    def start(self, runtime: Runtime, kept: list[Callable[[], Any]]) -> None:
        """Point the MySQL aliases at the session's database; register the kept ids."""
        settings = self._sort_aliases()
        if not self.redirected:
            return
        prefix = runtime.allow_databases_named_after_session()
        database = runtime.database()
        info = runtime.info
        running = runtime.running
        assert info is not None
        assert running is not None
        from django.db import connections

        no_tls = _no_tls_options() if running.endpoint.is_local else {}
        tags: set[str] = set()
        for alias in self.redirected:
            wrapper = connections[alias]
            if wrapper.connection is not None:  # opened before the run: on the old server
                wrapper.close()
            entry = settings[alias]
            options = {
                k: v for k, v in (entry.get("OPTIONS") or {}).items() if k not in _TARGET_OPTIONS
            }
            options.setdefault("charset", "utf8mb4")
            options.update(no_tls)
            tag = self._tags[alias] = _tag(alias, tags)
            # In place: Django's connection handler and wrappers share these dicts.
            entry.update(
                HOST=info.host,
                PORT=str(info.port),
                USER=database.user,
                PASSWORD=database.password,
                NAME=database.name,
                OPTIONS=options,
                TEST={**(entry.get("TEST") or {}), "NAME": f"{prefix}{tag}"},
            )
        self._prefix = prefix
        self._target = f"the session database {database.name} on {info.host}:{info.port}"
        self._target += f", test databases {prefix}*"
        self._kept_threads = _django_seam.KeptThreads()
        from django.db.backends.signals import connection_created

        connection_created.connect(self._on_connection_created, dispatch_uid=id(self))
        self._listening = True
        kept.append(self.kept_ids)
        self._let_threads_through({type(connections[alias]) for alias in self.redirected})

    def uses_mysql(self) -> bool:
        """Whether Django's settings name a MySQL database (no backend is loaded)."""
        conf = sys.modules.get("django.conf")
        if conf is None or not conf.settings.configured:
            return False
        databases: dict[str, dict[str, Any]] = conf.settings.DATABASES
        return any("mysql" in str(entry.get("ENGINE", "")) for entry in databases.values())

    def _sort_aliases(self) -> dict[str, dict[str, Any]]:
        conf = sys.modules.get("django.conf")
        if conf is None or not conf.settings.configured:
            return {}
        from django.db import connections

        databases: dict[str, dict[str, Any]] = conf.settings.DATABASES
        for alias, entry in databases.items():
            engine = str(entry.get("ENGINE", ""))
            if "mysql" not in engine:  # never load a backend only to leave it alone
                self.left.append(f"{alias!r} ({engine.rsplit('.', 1)[-1] or 'no engine'})")
                continue
            try:
                vendor = connections[alias].vendor
            except Exception as exc:  # noqa: BLE001 - ImproperlyConfigured, ImportError, ...
                raise DbleakError(f"Django database {alias!r} ({engine}): {exc}") from None
            if vendor == "mysql":
                self.redirected.append(alias)
            else:
                self.left.append(f"{alias!r} ({vendor})")
        return databases

    def header(self) -> list[str]:
        if not self.redirected and not self.left:
            return []
        if not self.redirected:
            return ["dbleak: Django: no MySQL database alias; nothing redirected"]
        names = ", ".join(repr(a) for a in self.redirected)
        line = f"dbleak: Django: {names} (MySQL) -> {self._target}"
        if self.left:
            line += f"; {', '.join(self.left)} left alone"
        return [line]

    # -- Django's connections ----------------------------------------------------------
    def _on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias not in self.redirected or connection.connection is None:
            return
        ident = server_thread_id(connection.connection)
        if ident is None:
            return
        thread = threading.current_thread()
        # Only a thread the test started makes the test's leak: the main thread, Django's
        # own threads and those of wider fixtures (a session's worker) keep theirs.
        kept = (
            thread is self.main
            or thread in self._before
            or thread in self._wider
            or (self._kept_threads is not None and self._kept_threads.current())
        )
        entry = _Opened(
            weakref.ref(connection), weakref.ref(thread), kept, None if kept else connection
        )
        with self._lock:
            self._opened[ident] = entry

    def kept_ids(self) -> set[int]:
        """Server ids of the open connections Django keeps for a live thread the test did
        not start (the main thread, the live server's): the detector's provider."""
        ids: set[int] = set()
        with self._lock:
            for ident, entry in list(self._opened.items()):
                wrapper = entry.wrapper()
                raw = wrapper.connection if wrapper is not None else None
                if raw is None or server_thread_id(raw) != ident:
                    del self._opened[ident]  # closed, or reopened under another id
                elif entry.kept and _alive(entry.thread()):
                    ids.add(ident)
        return ids

    @staticmethod
    def threads() -> set[threading.Thread]:
        return set(threading.enumerate())

    def wider_fixture_done(self, name: str, before: set[threading.Thread]) -> None:
        """A wider-scoped fixture was set up: the threads it started are its own. After
        pytest-django's settings hook (which a project may override to rename the test
        databases), each test database keeps the session's prefix: the session's user
        may create no other."""
        self._wider.update(set(threading.enumerate()) - before)
        if name != "django_db_modify_db_settings" or not self._prefix:
            return
        conf = sys.modules["django.conf"]
        for alias in self.redirected:
            test = conf.settings.DATABASES[alias].setdefault("TEST", {})
            chosen = str(test.get("NAME") or "")
            if not chosen.startswith(self._prefix):
                rest = re.sub(r"[^A-Za-z0-9_]", "", chosen)[:24]
                test["NAME"] = f"{self._prefix}{self._tags[alias]}" + (f"_{rest}" if rest else "")

    def pytest_runtest_logstart(self) -> None:
        self._before = set(threading.enumerate())

    def pytest_runtest_logfinish(self) -> None:
        # Judged: a thread's connection is left to its thread (or to the garbage collector).
        self._before = set()
        with self._lock:
            for entry in self._opened.values():
                entry.held = None

    def _let_threads_through(self, classes: set[type]) -> None:
        manager = _django_seam.blocker(self.config)
        if manager is None:
            return
        _django_seam.real_ensure_connection(manager)  # fits, or stops the run now
        from django.db.backends.base.base import BaseDatabaseWrapper

        main = self.main

        def ensure_connection(wrapper: Any) -> None:
            if threading.current_thread() is main:
                # Whatever pytest-django has put on the base class: the blocker or not.
                return BaseDatabaseWrapper.ensure_connection(wrapper)
            return _django_seam.real_ensure_connection(manager)(wrapper)

        for cls in classes:
            if "ensure_connection" in cls.__dict__:  # its own: pytest-django cannot block it
                continue
            cls.ensure_connection = ensure_connection  # type: ignore[attr-defined]
            self._patched.append(cls)

    def close(self) -> None:
        for cls in self._patched:
            if "ensure_connection" in cls.__dict__:
                delattr(cls, "ensure_connection")
        self._patched.clear()
        if self._listening:
            from django.db.backends.signals import connection_created

            connection_created.disconnect(dispatch_uid=id(self))
            self._listening = False
        with self._lock:
            self._opened.clear()


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _tag(alias: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]", "", alias)[:16] or "db"
    tag, n = base, 1
    while tag in taken:
        n += 1
        tag = f"{base}{n}"
    taken.add(tag)
    return tag


def _no_tls_options() -> dict[str, Any]:
    """A local server: no TLS, in the spelling of the driver behind ``MySQLdb``."""
    try:
        import MySQLdb
    except ImportError:
        return {}
    if MySQLdb.__name__ == "pymysql":  # pymysql.install_as_MySQLdb()
        return {"ssl_disabled": True}
    return {"ssl_mode": "DISABLED"}
