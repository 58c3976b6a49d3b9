"""What the tracker knows of PostgreSQL's drivers: psycopg (3), psycopg2, asyncpg, pg8000.

``drivers`` wraps what is listed here and asks here for a connection's id and
transaction state. PostgreSQL's id of a server connection is its backend's pid (as
``pg_stat_activity`` lists it); every driver keeps the pid the server sent at startup
(BackendKeyData), so both are read from what the driver already knows, never by a round
trip through the user's connection.

No pytest import.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

from pytest_dbleak.engine.import_watch import imported
from pytest_dbleak.engine.stacks import Frame, capture_stack

log = logging.getLogger("pytest_dbleak.engine.drivers")  # where driver lines come from

# (package, module, class, connect method, close methods, checked on); see drivers._Target.
# A class's __init__ is where every connection of it comes into being, whatever opened it:
# psycopg.connect() is Connection.connect, a classmethod bound at import; asyncpg's
# connect() coroutine and its pools build Connection(...) once the server accepted;
# pg8000's connect(), dbapi, legacy and native connections all run CoreConnection's.
# asyncpg's close() is a coroutine (its wrapper awaits it); terminate() closes at once.
TARGETS = (
    ("psycopg", "psycopg", "Connection", "__init__", ("close",), "psycopg 3.3.9"),
    # AsyncConnection.connect() builds the connection inside its coroutine: the stack at
    # __init__ leads to the user's await; its close() is a coroutine (awaited, then told).
    ("psycopg", "psycopg", "AsyncConnection", "__init__", ("close",), "psycopg 3.3.9"),
    (
        "asyncpg",
        "asyncpg.connection",
        "Connection",
        "__init__",
        ("close", "terminate"),
        "asyncpg 0.32.0",
    ),
    ("pg8000", "pg8000.core", "CoreConnection", "__init__", ("close",), "pg8000 1.31.6"),
)

# The drivers' own pools (driver_pools.POOLS) whose acquire is traced, as drivers._HANDOUTS
# (which lists these too): where a pooled connection was handed out names the line that
# acquired it. (package, module, class, method, checked on); the method may be async.
HANDOUTS = (
    # Pool.acquire() returns a context whose __aenter__ and __await__ both await _acquire.
    ("asyncpg", "asyncpg.pool", "Pool", "_acquire", "asyncpg 0.32.0"),
    # connection() (the context manager) gets its connection from getconn().
    ("psycopg_pool", "psycopg_pool", "ConnectionPool", "getconn", "psycopg-pool 3.3.3"),
    ("psycopg_pool", "psycopg_pool", "AsyncConnectionPool", "getconn", "psycopg-pool 3.3.3"),
)

# psycopg2's connection is a C type: neither its __init__ nor its close can be replaced.
# psycopg2.connect() is a Python function that calls the module global `_connect` (the C
# connect) at call time. Wrapping that global, rather than psycopg2.connect itself, also
# traces a `from psycopg2 import connect` bound before the plugin traced the driver, and
# whatever calls psycopg2.connect: SQLAlchemy's dialect, psycopg2.pool. A connection
# factory substituted for the user's would change the class of every connection (and
# cannot be where the user passes their own): the connection is left as it is, and its
# close is read from its `closed` flag instead (see ClosedFlags).
# (package, module, function, checked on): the function returns the new connection.
CONNECT_FUNCTIONS = (("psycopg2", "psycopg2", "_connect", "psycopg2-binary 2.9.13"),)

# Real connections whose id is read but whose connect is not wrapped as a method:
# psycopg2's (connected through CONNECT_FUNCTIONS).
REAL_CLASSES = ("psycopg2.extensions.connection",)

# libpq's transaction status: IDLE 0, ACTIVE 1 (a statement running: unknown), INTRANS 2,
# INERROR 3 (in a failed transaction), UNKNOWN 4 (connection bad).
_PQ_KNOWN = frozenset({0, 2, 3})
_PQ_IN_TRANSACTION = frozenset({2, 3})
# pg8000 keeps the status byte of the last ReadyForQuery: Idle, in Transaction, in Error.
_PG8000_STATUS: dict[object, bool] = {b"I": False, b"T": True, b"E": True}


def _loaded(module: str, name: str) -> type | None:
    # Looked up in sys.modules only: a driver that is not imported has no connections.
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) else None


def _is(conn: Any, module: str, name: str) -> bool:
    cls = _loaded(module, name)
    return cls is not None and isinstance(conn, cls)


def _libpq_info(conn: Any, name: str) -> Any:
    """An attribute of ``conn.info`` (libpq's own state, no round trip) of psycopg 3 (a
    property) and psycopg2 (a C getset), or None for a connection of any other driver."""
    info = inspect.getattr_static(type(conn), "info", None)
    if not isinstance(info, property | types.GetSetDescriptorType):
        return None  # mysqlclient's info() is a method; a Mock's attributes are not read
    try:
        return getattr(conn.info, name, None)
    except Exception:  # noqa: BLE001 - a closed connection may refuse (psycopg2 does)
        return None


def backend_pid(conn: Any) -> int | None:
    """The backend pid of a PostgreSQL driver's connection; 0 when the driver knows it is
    closed; None for a connection of another driver. Only for real driver classes."""
    pid = _libpq_info(conn, "backend_pid")  # libpq's PQbackendPID
    if isinstance(pid, int):
        return pid
    if _is(conn, "asyncpg.connection", "Connection"):  # a pool's proxy too (its metaclass)
        return _asyncpg_pid(conn)
    if _is(conn, "pg8000.core", "CoreConnection"):
        key = getattr(conn, "_backend_key_data", None)  # BackendKeyData: Int32 pid first
        if getattr(conn, "_usock", None) is None or not isinstance(key, bytes) or len(key) < 4:
            return 0
        return int.from_bytes(key[:4], "big", signed=True)
    return None


def _asyncpg_pid(conn: Any) -> int:
    try:
        if conn.is_closed():
            return 0
        return int(conn.get_server_pid())  # kept by the protocol since startup
    except Exception:  # noqa: BLE001 - a proxy released to its pool refuses every call
        return 0


def in_transaction(conn: Any) -> bool | None:
    """Whether a PostgreSQL driver's connection is inside a transaction, as the driver
    knows it from the server's last reply; None when it does not know, or for another
    driver's connection."""
    trx = _libpq_info(conn, "transaction_status")  # libpq's PQtransactionStatus
    if isinstance(trx, int):
        return trx in _PQ_IN_TRANSACTION if trx in _PQ_KNOWN else None
    if _is(conn, "asyncpg.connection", "Connection"):
        try:
            return None if conn.is_closed() else bool(conn.is_in_transaction())
        except Exception:  # noqa: BLE001 - a proxy released to its pool refuses every call
            return None
    if _is(conn, "pg8000.core", "CoreConnection"):
        # None right after connect (pg8000 resets it): no reply to a statement yet.
        return _PG8000_STATUS.get(getattr(conn, "_transaction_status", None))
    return None


class ClosedFlags:
    """Connections whose close cannot be wrapped (psycopg2's C type) but that say they are
    closed in a flag the driver sets locally (psycopg2's ``closed``: 1 closed, 2 broken).
    ``closed()`` returns the backend pids of those closed since the last call: the tracer
    asks before every check, so a close during a test is known when the test is judged.

    Keyed by backend pid: a newer connection with a reused pid replaces the old one, so
    the old one's close is never reported over the live one. Weak references: a
    connection nobody holds is the garbage collector's (its close is not reported, as
    for every driver).
    """

    def __init__(self) -> None:
        self._open: dict[int, Callable[[], Any]] = {}

    def add(self, pid: int, conn: Any) -> None:
        self._open[pid] = weakref.ref(conn)

    def closed(self) -> list[int]:
        gone = []
        for pid, ref in list(self._open.items()):  # a copy: another thread may connect
            conn = ref()
            if conn is None or getattr(conn, "closed", False):
                if self._open.get(pid) is ref:
                    del self._open[pid]
                if conn is not None:
                    gone.append(pid)
        return gone


class FunctionTracing:
    """The part of ``drivers.DriverTracer`` that wraps CONNECT_FUNCTIONS (psycopg2's) and
    reads the closes of their connections from ClosedFlags (a mixin: the DriverTracer
    holds the callbacks, ``_done`` and ``_patch``)."""

    _done: set[str]
    _on_connect: Callable[[Any, tuple[Frame, ...]], None]
    _on_close: Callable[[int | None], None]

    def _patch(self, owner: type | types.ModuleType, name: str, wrapper: Any) -> None:
        raise NotImplementedError

    def _forget_functions(self) -> None:
        self._traced_modules: set[int] = set()  # id() of every module traced
        self._flags = ClosedFlags()

    def _trace_functions(self) -> None:
        for package, module_name, name, checked_on in CONNECT_FUNCTIONS:
            key = f"{module_name}.{name}"
            if key in self._done or not imported(package):
                continue
            self._done.add(key)
            self._trace_function(module_name, name, checked_on)

    def _trace_function(self, module_name: str, name: str, checked_on: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            log.debug("dbleak: not tracing %s: %s", module_name, exc)
            return
        self._traced_modules.add(id(module))
        function = getattr(module, name, None)
        if not callable(function):
            log.warning(
                "dbleak: %s has no %s (checked on %s): its raw connections carry no site",
                module_name,
                name,
                checked_on,
            )
            return
        self._patch(module, name, self._traced_factory(function))

    def _verify_functions(self) -> list[str]:
        """Report the closes read from the flags; trace a module imported again (a new
        module object, untraced); returns what was missing."""
        for pid in self._flags.closed():
            self._on_close(pid)
        missing = []
        for _package, module_name, name, checked_on in CONNECT_FUNCTIONS:
            module = sys.modules.get(module_name)
            key = f"{module_name}.{name}"
            if key in self._done and module is not None and id(module) not in self._traced_modules:
                self._trace_function(module_name, name, checked_on)
                missing.append(f"{key} (imported again)")
        return missing

    def _traced_factory(self, connect: Any) -> Any:
        on_connect = self._on_connect

        @functools.wraps(connect)
        def traced_factory(*args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            on_connect(conn, capture_stack(1))
            # No close method of its class can be wrapped (a C type): its flag tells.
            pid = backend_pid(conn)
            if pid:  # 0: an async connection (async_=True) that is not connected yet
                self._flags.add(pid, conn)  # the tracer's current ones (restore() renews)
            return conn

        traced_factory._dbleak_kind = "factory"  # type: ignore[attr-defined]
        return traced_factory
