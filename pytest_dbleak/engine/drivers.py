"""What the tracker knows of each DBAPI driver: ids, transaction state, raw connects.

A pooled connection is reported through SQLAlchemy's pool events; a raw driver
connection is seen only on the server. Wrapping each driver's connect names the line
that opened a connection no pool owns, and its close tells the detector that a
connection still listed by the server is on its way out (as a pool's close event does).

Only imported drivers are traced (``trace_imported()``, also called the moment one of
``packages()`` is imported: import_watch); one never imported costs nothing. The methods
wrapped (``_TARGETS``, ``_FUNCTIONS``) name the versions they were checked on;
PostgreSQL's are in postgresql_drivers. No pytest import.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sqlite3
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pytest_dbleak.engine import postgresql_drivers as postgresql
from pytest_dbleak.engine.driver_pools import (
    POOLS,
    OnPool,
    PoolTarget,
)
from pytest_dbleak.engine.import_watch import imported
from pytest_dbleak.engine.stacks import Frame, capture_stack

log = logging.getLogger(__name__)

OnConnect = Callable[[Any, tuple[Frame, ...]], None]
OnClose = Callable[[int | None], None]
_Owner = type | ModuleType  # what a method or function is patched on: a class, a module


def driver_connection(dbapi_connection: Any) -> Any:
    """The driver's own connection behind `dbapi_connection`.

    Async dialects hand out an adapter whose real connection is ``driver_connection``.
    Only an attribute the object's class declares is read: on a ``Mock`` any attribute
    "exists", and the plugin must not make up children of a user's mock.
    """
    if inspect.getattr_static(type(dbapi_connection), "driver_connection", None) is None:
        return dbapi_connection
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


_REAL_CLASSES: dict[int, type] = {}  # id -> class; a re-imported driver adds its new class
_real_cache: tuple[int, tuple[type, ...]] = (-1, ())


def _real_driver_classes() -> tuple[type, ...]:
    # Looked up in sys.modules only: a driver that is not imported has no connections.
    # Looked up again only when a module was imported since (re-imports included).
    global _real_cache
    if _real_cache[0] == len(sys.modules):
        return _real_cache[1]
    names = [(t.module, t.cls) for t in _TARGETS]
    names += [tuple(key.rsplit(".", 1)) for key in _WRAPPER_CLASSES]  # type: ignore[misc]
    names += [tuple(key.rsplit(".", 1)) for key in postgresql.REAL_CLASSES]  # type: ignore[misc]
    for module_name, cls_name in names:
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module is not None else None
        if isinstance(cls, type):
            _REAL_CLASSES[id(cls)] = cls
    _real_cache = (len(sys.modules), tuple(_REAL_CLASSES.values()))
    return _real_cache[1]


def _forget_real_classes() -> None:
    """Look the classes up again: a module reloaded in place keeps sys.modules' size."""
    global _real_cache
    _real_cache = (-1, ())


# Classes that wrap a real driver connection (read through their `_cnx`); PostgreSQL's
# real connections whose connect is not wrapped as a method are in postgresql_drivers.
_WRAPPER_CLASSES = ("mysql.connector.pooling.PooledMySQLConnection",)


def is_real_connection(dbapi_connection: Any) -> bool:
    """Whether `dbapi_connection` is a connection of a real driver: one of the traced
    MySQL or PostgreSQL drivers' classes, or SQLite's (a real resource, no server one).
    Anything else - a ``Mock``, a test suite's fake DBAPI - holds no resource."""
    conn = driver_connection(dbapi_connection)
    if isinstance(conn, sqlite3.Connection):
        return True
    return isinstance(conn, _real_driver_classes())


def server_thread_id(dbapi_connection: Any) -> int | None:
    """The server's connection id (processlist ID) of a DBAPI connection, if known.

    Read only from connections of the real driver classes, and only through attributes
    that have no side effect - except mysqlclient's ``thread_id()`` and asyncpg's
    ``get_server_pid()``, accessors of the real class. A mock's methods are never called
    (a test may assert its ``mock_calls``).
    """
    conn = driver_connection(dbapi_connection)
    real = _real_driver_classes()
    if not isinstance(conn, real):
        return None
    conn = getattr(conn, "_cnx", conn)  # mysql-connector's PooledMySQLConnection
    ident = getattr(conn, "server_thread_id", None)  # PyMySQL, aiomysql, asyncmy
    if isinstance(ident, tuple) and ident:
        return int(ident[0])
    ident = getattr(conn, "connection_id", None)  # mysql-connector
    if isinstance(ident, int):
        return ident
    pid = postgresql.backend_pid(conn)  # PostgreSQL's id of a backend: its pid
    if pid is not None:
        return pid or None  # 0: closed
    thread_id = getattr(conn, "thread_id", None)  # mysqlclient
    if callable(thread_id) and isinstance(conn, real):
        try:
            return int(thread_id())
        except Exception:  # noqa: BLE001 - a closed connection has no id
            return None
    return None


_SERVER_STATUS_IN_TRANS = 1


def in_transaction(dbapi_connection: Any) -> bool | None:
    """Whether the connection has an open transaction, from what the driver already
    knows; None when it cannot be told this way.

    The status flag of the last server reply is free to read. MariaDB does not set it
    for an implicit read-only transaction (autocommit off, then a SELECT), which still
    holds a snapshot and metadata locks: the detector asks the server about those from
    its own admin connection when it judges (never through the user's connection).
    """
    conn = driver_connection(dbapi_connection)
    if not isinstance(conn, _real_driver_classes()):
        return None
    conn = getattr(conn, "_cnx", conn)
    flag = getattr(conn, "in_transaction", None)  # mysql-connector
    if isinstance(flag, bool):
        return flag
    trx = postgresql.in_transaction(conn)  # libpq's status, asyncpg's, pg8000's
    if trx is not None:
        return trx
    status = getattr(conn, "server_status", None)  # PyMySQL, aiomysql, asyncmy
    if isinstance(status, int):
        return bool(status & _SERVER_STATUS_IN_TRANS)
    return None


@dataclass(frozen=True)
class _Target:
    """One driver class whose connect and close are wrapped."""

    package: str  # traced once this package is in sys.modules
    module: str  # where the class is (imported then: MySQLdb imports it lazily)
    cls: str
    connect: str  # method that opens the connection (sync or async)
    closes: tuple[str, ...]
    checked_on: str


_TARGETS = (
    _Target(
        "pymysql", "pymysql.connections", "Connection", "connect", ("close",), "PyMySQL 1.1, 1.2.4"
    ),
    _Target(
        "MySQLdb", "MySQLdb.connections", "Connection", "__init__", ("close",), "mysqlclient 2.3.2"
    ),
    _Target(
        "mysql.connector",
        "mysql.connector.connection",
        "MySQLConnection",
        "connect",
        ("close", "disconnect"),
        "mysql-connector-python 26.10.0",
    ),
    # The C extension needs its own libssl; where it cannot load, nothing to trace.
    _Target(
        "mysql.connector",
        "mysql.connector.connection_cext",
        "CMySQLConnection",
        "connect",
        ("close", "disconnect"),
        "mysql-connector-python 26.10.0",
    ),
    _Target(
        "mariadb", "mariadb.connections", "Connection", "__init__", ("close",), "mariadb 1.1.14"
    ),
    _Target(
        "aiomysql", "aiomysql.connection", "Connection", "_connect", ("close",), "aiomysql 0.3.2"
    ),
    _Target("asyncmy", "asyncmy.connection", "Connection", "connect", ("close",), "asyncmy 0.2.18"),
    *(_Target(*target) for target in postgresql.TARGETS),
)
# Module functions that return a connection (psycopg2's): see FunctionTracing.
_FUNCTIONS = postgresql.CONNECT_FUNCTIONS


# Drivers' own pools: where a pooled connection was handed out names the line that used
# it, e.g. for a transaction left open on it, or the acquire of one never released.
# (package, module, class, method, checked on); the method may be a coroutine function.
_HANDOUTS = (
    (
        "mysql.connector",
        "mysql.connector.pooling",
        "MySQLConnectionPool",
        "get_connection",
        "mysql-connector-python 26.10.0",
    ),
    ("aiomysql", "aiomysql.pool", "Pool", "_acquire", "aiomysql 0.3.2"),
    ("asyncmy", "asyncmy.pool", "Pool", "_acquire", "asyncmy 0.2.18"),
    ("mariadb", "mariadb.connectionpool", "ConnectionPool", "get_connection", "mariadb 1.1.14"),
    *postgresql.HANDOUTS,
)


def packages() -> frozenset[str]:
    """Every driver package traced here (import_watch watches for their import)."""
    rows = [*(t.package for t in _TARGETS), *(p.package for p in POOLS)]
    return frozenset([*rows, *(str(row[0]) for row in (*_FUNCTIONS, *_HANDOUTS))])


class DriverTracer(postgresql.FunctionTracing):
    """Wraps the connect and close of every imported driver; restore() undoes it."""

    def __init__(
        self,
        on_connect: OnConnect,
        on_close: OnClose,
        on_handout: OnConnect | None = None,
        on_pool: OnPool | None = None,
    ) -> None:
        self._on_connect = on_connect
        self._on_close = on_close
        self._on_handout = on_handout
        self._on_pool = on_pool
        self._done: set[str] = set()
        self._traced_classes: set[int] = set()  # id() of every class _trace() was given
        self._patches: list[tuple[_Owner, str, Any, Any]] = []  # owner, name, original, ours
        self._forget_functions()
        # One pass at a time, never waited for: a pass may import, and an import in another
        # thread may call for a pass (import_watch) while holding that module's import lock.
        self._tracing = threading.Lock()

    def trace_imported(self) -> None:
        if len(self._done) == len(_TARGETS) + len(_HANDOUTS) + len(POOLS) + len(_FUNCTIONS):
            return
        if not self._tracing.acquire(blocking=False):
            return  # another thread's pass, or this one's: the next window's looks again
        try:
            self._trace_imported()
        finally:
            self._tracing.release()

    def _trace_imported(self) -> None:
        self._trace_handouts()
        self._trace_pools()
        self._trace_functions()
        for target in _TARGETS:
            key = f"{target.module}.{target.cls}"
            if key in self._done or not imported(target.package):
                continue
            self._done.add(key)
            try:
                module = importlib.import_module(target.module)
            except ImportError as exc:
                log.debug("dbleak: not tracing %s: %s", target.module, exc)
                continue
            cls = getattr(module, target.cls, None)
            if not isinstance(cls, type):
                log.warning(
                    "dbleak: %s has no class %s (checked on %s): its raw connections carry no site",
                    target.module,
                    target.cls,
                    target.checked_on,
                )
                continue
            self._trace(cls, target)

    def _trace_handouts(self) -> None:
        on_handout = self._on_handout
        if on_handout is None:
            return
        for package, module_name, cls_name, method, checked_on in _HANDOUTS:
            key = f"{module_name}.{cls_name}.{method}"
            if key in self._done or not imported(package):
                continue
            self._done.add(key)
            try:
                cls = getattr(importlib.import_module(module_name), cls_name)
                original = getattr(cls, method)
            except (ImportError, AttributeError) as exc:
                log.warning("dbleak: cannot trace %s (checked on %s): %s", key, checked_on, exc)
                continue

            self._patch(cls, method, self._handout_wrapper(original))

    def _handout_wrapper(self, original: Any) -> Any:
        on_handout = self._on_handout
        assert on_handout is not None

        @functools.wraps(original)
        def traced_handout(pool: Any, *args: Any, **kwargs: Any) -> Any:
            stack = capture_stack(1)  # a coroutine's: its frames lead to the user's await
            conn = original(pool, *args, **kwargs)
            if inspect.isawaitable(conn):
                return _handed_out_later(conn, stack, on_handout)
            on_handout(conn, stack)
            return conn

        traced_handout._dbleak_kind = "handout"  # type: ignore[attr-defined]
        return traced_handout

    def _trace_pools(self) -> None:
        on_pool = self._on_pool
        if on_pool is None:
            return
        for target in POOLS:
            key = f"{target.module}.{target.traced}.__init__"
            if key in self._done or not imported(target.package):
                continue
            self._done.add(key)
            try:
                cls = getattr(importlib.import_module(target.module), target.traced)
                original = cls.__init__
            except (ImportError, AttributeError) as exc:
                log.warning(
                    "dbleak: cannot trace %s (checked on %s): %s", key, target.checked_on, exc
                )
                continue

            @functools.wraps(original)
            def traced_init(
                pool: Any,
                *args: Any,
                _original: Any = original,
                _target: PoolTarget = target,
                **kwargs: Any,
            ) -> None:
                # Before the original: a pool that opens its connections in __init__
                # (mysql-connector) is known by the time they appear.
                on_pool(pool, _target, capture_stack(1))
                _original(pool, *args, **kwargs)

            self._patch(cls, "__init__", traced_init)

    def restore(self) -> None:
        for owner, name, original, ours in reversed(self._patches):
            if owner.__dict__.get(name) is ours:  # never undo what somebody put over ours
                _restore(owner, name, original)
        self._patches.clear()
        self._done.clear()
        self._traced_classes.clear()
        self._forget_functions()

    def verify(self) -> list[str]:
        """Put back every wrapper somebody removed or replaced (a monkeypatch undone, a
        test's own patch); returns what was missing, e.g. ``Connection.close``. A few
        dictionary lookups: it runs before every check - which is also when the closes
        no wrapper sees are read from the connections' flags."""
        missing = self._verify_functions()
        for target in _TARGETS:
            # A driver module imported again (importlib.reload, a test that drops it from
            # sys.modules) has a new class: trace that one too.
            if f"{target.module}.{target.cls}" not in self._done:
                continue
            module = sys.modules.get(target.module)
            cls = getattr(module, target.cls, None) if module is not None else None
            if isinstance(cls, type) and id(cls) not in self._traced_classes:
                _forget_real_classes()
                self._trace(cls, target)
                missing.append(f"{target.module}.{target.cls} (imported again)")
        for i, (owner, name, original, ours) in enumerate(self._patches):
            current = owner.__dict__.get(name, _INHERITED)
            if current is ours:
                continue
            if getattr(current, "_dbleak_kind", None) is not None:
                # An earlier wrapper of ours, put back by somebody's undo: it traces.
                self._patches[i] = (owner, name, original, current)
                continue
            kind = f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else ""
            missing.append(f"{kind or owner.__name__}.{name}")
            # Wrap what is there now (somebody's patch keeps working, under ours).
            base = getattr(owner, name, None)
            if base is None:
                continue
            wrapper = self._rewrap(name, base, ours)
            setattr(owner, name, wrapper)
            self._patches[i] = (owner, name, current, wrapper)
        return missing

    def _rewrap(self, name: str, base: Any, ours: Any) -> Any:
        kind = getattr(ours, "_dbleak_kind", None)
        if kind == "connect":
            return self._traced_connect(base)
        if kind == "close":
            return self._traced_close(base)
        if kind == "factory":
            return self._traced_factory(base)
        if kind == "handout":
            return self._handout_wrapper(base)
        return ours

    def _trace(self, cls: type, target: _Target) -> None:
        self._traced_classes.add(id(cls))
        connect = getattr(cls, target.connect, None)
        if connect is None:
            log.warning(
                "dbleak: %s.%s has no %s (checked on %s): its raw connections carry no site",
                target.module,
                target.cls,
                target.connect,
                target.checked_on,
            )
            return
        self._patch(cls, target.connect, self._traced_connect(connect))
        for name in target.closes:
            close = getattr(cls, name, None)
            if close is not None:
                self._patch(cls, name, self._traced_close(close))

    def _patch(self, owner: _Owner, name: str, wrapper: Any) -> None:
        # The original as the class holds it (a staticmethod stays one when restored).
        original = owner.__dict__.get(name, _INHERITED)
        setattr(owner, name, wrapper)
        self._patches.append((owner, name, original, wrapper))

    def _traced_connect(self, connect: Any) -> Any:
        on_connect = self._on_connect
        if inspect.iscoroutinefunction(connect):

            @functools.wraps(connect)
            async def traced_async_connect(conn: Any, *args: Any, **kwargs: Any) -> Any:
                # Captured while the coroutine runs: its frames lead to the user's await.
                stack = capture_stack(1)
                result = await connect(conn, *args, **kwargs)
                on_connect(conn, stack)
                return result

            traced_async_connect._dbleak_kind = "connect"  # type: ignore[attr-defined]
            return traced_async_connect

        @functools.wraps(connect)
        def traced_connect(conn: Any, *args: Any, **kwargs: Any) -> Any:
            result = connect(conn, *args, **kwargs)
            on_connect(conn, capture_stack(1))
            return result

        traced_connect._dbleak_kind = "connect"  # type: ignore[attr-defined]
        return traced_connect

    def _traced_close(self, close: Any) -> Any:
        on_close = self._on_close
        if inspect.iscoroutinefunction(close):

            @functools.wraps(close)
            async def traced_async_close(conn: Any, *args: Any, **kwargs: Any) -> Any:
                ident = server_thread_id(conn)  # read before: a closed connection has none
                try:
                    return await close(conn, *args, **kwargs)
                finally:
                    on_close(ident)  # once it is closed (asyncpg's close() is a coroutine)

            traced_async_close._dbleak_kind = "close"  # type: ignore[attr-defined]
            return traced_async_close

        @functools.wraps(close)
        def traced_close(conn: Any, *args: Any, **kwargs: Any) -> Any:
            ident = server_thread_id(conn)  # read before: a closed connection has none
            try:
                return close(conn, *args, **kwargs)
            finally:
                on_close(ident)

        traced_close._dbleak_kind = "close"  # type: ignore[attr-defined]
        return traced_close


_INHERITED = object()


async def _handed_out_later(awaitable: Any, stack: tuple[Frame, ...], on_handout: OnConnect) -> Any:
    conn = await awaitable
    on_handout(conn, stack)
    return conn


def _restore(owner: _Owner, name: str, original: Any) -> None:
    if original is _INHERITED:
        delattr(owner, name)
    else:
        setattr(owner, name, original)
