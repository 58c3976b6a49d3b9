"""Tracks every SQLAlchemy pool of the process and the DBAPI connections it holds.

Pool events are listened to on the ``Pool`` class, so every pool class is covered,
including NullPool and StaticPool which keep no ``checkedout()`` counter. Pool
creation is seen by wrapping ``Pool.__init__`` (SQLAlchemy has no creation event).
Everything is stamped with a global sequence number, so that a *window* (a test, or
an ``assert_no_leaks()`` block) is just "what happened since sequence N".

No pytest import: this module only knows SQLAlchemy and the DBAPI drivers.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import reset_none

log = logging.getLogger(__name__)

Frame = tuple[str, int, str]  # (filename, line number, function)
_STACK_LIMIT = 64
_POOL_EVENTS = ("connect", "checkout", "checkin", "close", "detach", "close_detached")


def capture_stack(skip: int = 1) -> tuple[Frame, ...]:
    """The caller's stack, innermost first, without reading any source file."""
    return stack_of(sys._getframe(skip + 1))


def stack_of(frame: Any) -> tuple[Frame, ...]:
    """`frame` and its callers, innermost first (also another thread's frame)."""
    frames: list[Frame] = []
    while frame is not None and len(frames) < _STACK_LIMIT:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return tuple(frames)


def _driver_connection(dbapi_connection: Any) -> Any:
    # Async dialects hand out an adapter whose real connection is driver_connection.
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def server_thread_id(dbapi_connection: Any) -> int | None:
    """The server's connection id (processlist ID) of a DBAPI connection, if known."""
    conn = _driver_connection(dbapi_connection)
    ident = getattr(conn, "server_thread_id", None)  # PyMySQL, aiomysql
    if isinstance(ident, tuple) and ident:
        return int(ident[0])
    ident = getattr(conn, "connection_id", None)  # mysql-connector
    if isinstance(ident, int):
        return ident
    thread_id = getattr(conn, "thread_id", None)  # mysqlclient
    if callable(thread_id):
        try:
            return int(thread_id())
        except Exception:  # noqa: BLE001 - a closed or foreign connection has no id
            return None
    return None


_SERVER_STATUS_IN_TRANS = 1


def in_transaction(dbapi_connection: Any, *, ask_server: bool) -> bool | None:
    """Whether the connection has an open transaction; None when it cannot be told.

    The status flag of the last server reply is free to read. MariaDB does not set it
    for an implicit read-only transaction (autocommit off, then a SELECT), which still
    holds a snapshot and metadata locks, so for pools that do not reset connections on
    return the server is asked (``@@in_transaction``) while the connection is ours.
    """
    conn = _driver_connection(dbapi_connection)
    flag = getattr(conn, "in_transaction", None)  # mysql-connector
    if isinstance(flag, bool):
        return flag
    status = getattr(conn, "server_status", None)  # PyMySQL, aiomysql
    if isinstance(status, int) and status & _SERVER_STATUS_IN_TRANS:
        return True
    if not ask_server or not hasattr(conn, "cursor"):
        return False if isinstance(status, int) else None
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT @@in_transaction")
            row = cursor.fetchone()
        finally:
            cursor.close()
    except Exception:  # noqa: BLE001 - MySQL lacks @@in_transaction; a broken link is not ours to report
        return False if isinstance(status, int) else None
    return bool(row and row[0])


@dataclass(eq=False)
class PoolState:
    """What the tracker knows of one pool (one engine)."""

    serial: int
    created_seq: int  # -1: the pool existed before tracking started
    owned: bool  # created while a fixture of wider scope was being set up
    stack: tuple[Frame, ...]
    pool_class: str
    ref: Callable[[], Pool | None]
    thread: str = ""
    open: dict[int, ConnState] = field(default_factory=dict)
    # When the tracker saw this pool object: Tracker.pools is in this order. Not the same
    # as created_seq, which a pool recreated by Engine.dispose() inherits from its engine.
    registered_seq: int = -1

    @property
    def alive(self) -> bool:
        return self.ref() is not None

    @property
    def resets_on_return(self) -> bool:
        pool = self.ref()
        return pool is None or getattr(pool, "_reset_on_return", None) is not reset_none


@dataclass(eq=False)
class Checkout:
    seq: int
    stack: tuple[Frame, ...]
    thread: str
    owned: bool
    fairy: Callable[[], Any] | None  # weak reference to the pool's connection proxy


@dataclass(eq=False)
class ConnState:
    """One DBAPI connection opened by a tracked pool."""

    serial: int
    pool: PoolState
    thread_id: int | None
    created_seq: int
    owned: bool
    stack: tuple[Frame, ...]
    ref: Callable[[], Any] | None
    checkout: Checkout | None = None
    last_checkout: Checkout | None = None
    checkin_seq: int = -1
    in_trx: bool = False
    detached: bool = False

    @property
    def collected(self) -> bool:
        """The DBAPI connection was reclaimed by the garbage collector, never closed."""
        return self.ref is not None and self.ref() is None


@dataclass(frozen=True)
class Opened:
    """Where a driver connection was opened: names the site of a connection no pool owns."""

    seq: int
    stack: tuple[Frame, ...]
    thread: str


_OPENED_LIMIT = 10_000


@dataclass(frozen=True)
class GcReturn:
    """A checked-out connection given back by the garbage collector, not by close()."""

    seq: int
    checkout: Checkout
    conn: ConnState


class Tracker:
    """Owns the event listeners and the per-process record of pools and connections."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._serial = itertools.count(1)
        self.seq = 0
        self.installed = False
        self.open: dict[int, ConnState] = {}  # id(dbapi connection) -> state
        self.by_thread_id: dict[int, ConnState] = {}
        self.pools: list[PoolState] = []  # in registration order, for "created since"
        self.gc_returns: deque[GcReturn] = deque(maxlen=10_000)
        self.closed_thread_ids: deque[tuple[int, int]] = deque(maxlen=10_000)  # (seq, id)
        self.opened: OrderedDict[int, Opened] = OrderedDict()  # server thread id -> site
        self._driver_patches: list[tuple[type, str, Any]] = []
        self._owner_depth = 0
        self._listeners: list[tuple[str, Callable[..., None]]] = []

    # -- sequence and ownership -------------------------------------------------
    def tick(self) -> int:
        self.seq = next(self._seq)
        return self.seq

    def mark(self) -> int:
        """A sequence number strictly before everything that happens from now on."""
        return self.tick() + 1

    @property
    def owner_active(self) -> bool:
        return self._owner_depth > 0

    def push_owner(self) -> None:
        """Objects created from now until pop_owner() belong to a wider-scoped fixture."""
        with self._lock:
            self._owner_depth += 1

    def pop_owner(self) -> None:
        with self._lock:
            self._owner_depth = max(0, self._owner_depth - 1)

    # -- installation ----------------------------------------------------------
    def install(self) -> None:
        if self.installed:
            return
        _install_pool_new()
        _CREATION_HOOKS.append(self._on_pool_created)
        for name in _POOL_EVENTS:
            fn = getattr(self, f"_on_{name}")
            event.listen(Pool, name, fn)
            self._listeners.append((name, fn))
        self._patch_drivers()
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        for name, fn in self._listeners:
            event.remove(Pool, name, fn)
        self._listeners.clear()
        if self._on_pool_created in _CREATION_HOOKS:
            _CREATION_HOOKS.remove(self._on_pool_created)
        for cls, name, original in reversed(self._driver_patches):
            setattr(cls, name, original)
        self._driver_patches.clear()
        self.installed = False

    def _patch_drivers(self) -> None:
        """See where raw PyMySQL connections are opened and closed.

        Pools report their connections through events; a raw driver connection is seen
        only on the server. Wrapping the driver's connect() names the line that opened a
        connection no pool owns, and its close() tells the detector that a connection
        still listed by the server is on its way out (as a pool's close event does).
        """
        try:
            from pymysql.connections import Connection
        except ImportError:
            return
        tracker = self
        connect = Connection.__dict__["connect"]
        close = Connection.__dict__["close"]

        @functools.wraps(connect)
        def traced_connect(conn: Any, *args: Any, **kwargs: Any) -> Any:
            result = connect(conn, *args, **kwargs)
            tracker._on_driver_connect(conn)
            return result

        @functools.wraps(close)
        def traced_close(conn: Any) -> Any:
            was_open = bool(getattr(conn, "open", False))
            try:
                return close(conn)
            finally:
                if was_open:
                    tracker._on_driver_close(conn)

        for name, original, wrapper in (("connect", connect, traced_connect),
                                        ("close", close, traced_close)):
            setattr(Connection, name, wrapper)
            self._driver_patches.append((Connection, name, original))

    # -- pools -----------------------------------------------------------------
    def _on_pool_created(self, pool: Pool) -> None:
        origin = _recreated_from(pool)
        with self._lock:
            seq = self.tick()
            if origin is not None:
                # Engine.dispose() swaps in pool.recreate(): same engine, same owner.
                src = self.state_of(origin)
                state = PoolState(
                    next(self._serial), src.created_seq, src.owned, src.stack,
                    type(pool).__name__, weakref.ref(pool), src.thread,
                )
            else:
                state = PoolState(
                    next(self._serial), seq, self.owner_active, capture_stack(2),
                    type(pool).__name__, weakref.ref(pool), threading.current_thread().name,
                )
            state.registered_seq = seq
            pool._dbleak_state = state  # type: ignore[attr-defined]
            self.pools.append(state)
            self._trim_pools()

    def state_of(self, pool: Pool) -> PoolState:
        state: PoolState | None = getattr(pool, "_dbleak_state", None)
        if state is None:
            # Created before install(): treat as pre-existing, owned by nobody in a window.
            state = PoolState(
                next(self._serial), -1, True, (), type(pool).__name__, weakref.ref(pool)
            )
            pool._dbleak_state = state  # type: ignore[attr-defined]
        return state

    def _trim_pools(self) -> None:
        # Forget pools that are gone and hold nothing; keep the list short.
        if len(self.pools) > 256:
            self.pools = [p for p in self.pools if p.alive or p.open]

    def pools_created_since(self, seq: int) -> Iterator[PoolState]:
        # Stop on registration order, filter on creation: a pool that dispose() recreated
        # during the window carries its engine's older created_seq.
        for state in reversed(self.pools):
            if state.registered_seq < seq:
                break
            if state.created_seq >= seq:
                yield state

    # -- connection events -----------------------------------------------------
    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        pool = _pool_of(record)
        with self._lock:
            pstate = self.state_of(pool) if pool is not None else None
            if pstate is None:
                return
            self._new_conn(dbapi_connection, pstate, self.tick(), capture_stack(2))

    def _new_conn(
        self, dbapi_connection: Any, pstate: PoolState, seq: int, stack: tuple[Frame, ...]
    ) -> ConnState:
        try:
            ref: Callable[[], Any] | None = weakref.ref(dbapi_connection)
        except TypeError:
            ref = None
        state = ConnState(
            next(self._serial), pstate, server_thread_id(dbapi_connection), seq,
            self.owner_active or pstate.created_seq < 0, stack, ref,
        )
        self.open[id(dbapi_connection)] = state
        pstate.open[state.serial] = state
        if state.thread_id is not None:
            self.by_thread_id[state.thread_id] = state
        return state

    def _conn(self, dbapi_connection: Any, record: Any) -> ConnState | None:
        if dbapi_connection is None:
            return None
        state = self.open.get(id(dbapi_connection))
        if state is not None and state.ref is not None and state.ref() is not dbapi_connection:
            state = None  # the id was reused by a new object
        if state is None:
            pool = _pool_of(record)
            if pool is None:
                return None
            state = self._new_conn(dbapi_connection, self.state_of(pool), -1, ())
        return state

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        stack = capture_stack(2)
        with self._lock:
            state = self._conn(dbapi_connection, record)
            if state is None:
                return
            try:
                fairy: Callable[[], Any] | None = weakref.ref(proxy)
            except TypeError:
                fairy = None
            state.checkout = Checkout(
                self.tick(), stack, threading.current_thread().name, self.owner_active, fairy
            )

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        with self._lock:
            state = self._conn(dbapi_connection, record)
            if state is None:
                return
            seq = self.tick()
            checkout, state.checkout = state.checkout, None
            if checkout is not None:
                state.last_checkout = checkout
                if checkout.fairy is not None and checkout.fairy() is None:
                    self.gc_returns.append(GcReturn(seq, checkout, state))
            state.checkin_seq = seq
            pstate = state.pool
        # Outside the lock: asking the server is I/O. The connection is still ours here:
        # the checkin event runs before the pool puts it back in its queue.
        trx = in_transaction(dbapi_connection, ask_server=not pstate.resets_on_return)
        state.in_trx = bool(trx)

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self._forget(dbapi_connection)

    def _on_detach(self, dbapi_connection: Any, record: Any) -> None:
        with self._lock:
            state = self.open.get(id(dbapi_connection))
            if state is not None:
                state.detached = True

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        self._forget(dbapi_connection)

    def _on_driver_connect(self, dbapi_connection: Any) -> None:
        ident = server_thread_id(dbapi_connection)
        if ident is None:
            return
        stack = capture_stack(2)
        with self._lock:
            self.opened[ident] = Opened(self.tick(), stack, threading.current_thread().name)
            while len(self.opened) > _OPENED_LIMIT:
                self.opened.popitem(last=False)

    def _on_driver_close(self, dbapi_connection: Any) -> None:
        ident = server_thread_id(dbapi_connection)
        if ident is None:
            return
        with self._lock:
            self.opened.pop(ident, None)
            self.closed_thread_ids.append((self.tick(), ident))

    def _forget(self, dbapi_connection: Any) -> None:
        with self._lock:
            state = self.open.pop(id(dbapi_connection), None)
            if state is None:
                return
            state.pool.open.pop(state.serial, None)
            if state.thread_id is not None:
                if self.by_thread_id.get(state.thread_id) is state:
                    del self.by_thread_id[state.thread_id]
                self.closed_thread_ids.append((self.tick(), state.thread_id))

    # -- queries used by the detector ----------------------------------------------
    def connections(self) -> list[ConnState]:
        with self._lock:
            return list(self.open.values())

    def idle_in_transaction(self) -> set[int]:
        with self._lock:
            return {
                s.serial for s in self.open.values() if s.checkout is None and s.in_trx
            }

    def gc_returns_since(self, seq: int) -> list[GcReturn]:
        with self._lock:
            return [g for g in self.gc_returns if g.checkout.seq >= seq]

    def opened_at(self, ident: int) -> Opened | None:
        """Where the driver connection with server thread id `ident` was opened, if seen."""
        with self._lock:
            return self.opened.get(ident)

    def closed_since(self, seq: int) -> set[int]:
        with self._lock:
            return {ident for s, ident in self.closed_thread_ids if s >= seq}

    def prune(self) -> None:
        """Forget connections the garbage collector took, once a check has seen them."""
        with self._lock:
            for key, state in list(self.open.items()):
                if state.collected:
                    del self.open[key]
                    state.pool.open.pop(state.serial, None)
                    ident = state.thread_id
                    if ident is not None and self.by_thread_id.get(ident) is state:
                        del self.by_thread_id[ident]
            self._trim_pools()

    def checked_out_count(self) -> int:
        with self._lock:
            return sum(1 for s in self.open.values() if s.checkout is not None)


# Pool creation is seen in __new__, not __init__: SQLAlchemy reads the pool classes'
# __init__ signatures to route create_engine() keywords, and a wrapper there would hide
# them. The __new__ stays once installed (deleting it again leaves CPython's slot
# pointing at object.__new__ with arguments, which raises); without a tracker it only
# calls object.__new__.
_CREATION_HOOKS: list[Callable[[Pool], None]] = []


def _pool_new(cls: type[Pool], *args: Any, **kwargs: Any) -> Pool:
    pool = object.__new__(cls)
    for hook in _CREATION_HOOKS:
        hook(pool)
    return pool


def _install_pool_new() -> None:
    current = Pool.__dict__.get("__new__")
    if getattr(current, "__func__", None) is not _pool_new:
        Pool.__new__ = staticmethod(_pool_new)  # type: ignore[assignment]


def _pool_of(record: Any) -> Pool | None:
    # ConnectionPoolEntry has no public pool attribute; the record keeps it privately.
    pool = getattr(record, "_ConnectionRecord__pool", None)
    return pool if isinstance(pool, Pool) else None


def _recreated_from(pool: Pool) -> Pool | None:
    """The pool whose recreate() is constructing `pool`, if any."""
    frame: Any = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        if frame.f_code.co_name == "recreate":
            origin = frame.f_locals.get("self")
            if isinstance(origin, Pool) and origin is not pool:
                return origin
        frame = frame.f_back
    return None
