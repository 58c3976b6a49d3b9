"""Tracks every SQLAlchemy pool of the process and the DBAPI connections it holds.

Pool events are listened to on the ``Pool`` class, so every pool class is covered,
including NullPool and StaticPool which keep no ``checkedout()`` counter; each pool's
``connect`` event is listened to on the pool itself, so that the listener knows its pool.
The SQLAlchemy internals this needs live in ``_sqla_seam``; raw driver connections are
traced by ``drivers`` and recorded in ``raw_connections``; what is recorded is in
``records``. Everything is stamped with a global sequence number, so that a
*window* (a test, or an ``assert_no_leaks()`` block) is just "what happened since
sequence N".

No pytest import: this module only knows SQLAlchemy and the DBAPI drivers.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.pool import Pool

from pytest_dbleak.engine import _sqla_seam as seam
from pytest_dbleak.engine.children import CONNECT, FORK_SHARED, Children
from pytest_dbleak.engine.drivers import (
    DriverTracer,
    in_transaction,
    is_real_connection,
    server_thread_id,
)
from pytest_dbleak.engine.drivers import (
    packages as driver_packages,
)
from pytest_dbleak.engine.import_watch import ImportWatch
from pytest_dbleak.engine.instrumentation import Instrumentation
from pytest_dbleak.engine.raw_connections import RawConnections
from pytest_dbleak.engine.records import (
    Checkout,
    ConnState,
    DriverPoolState,
    GcReturn,
    Opened,
    PoolState,
)
from pytest_dbleak.engine.stacks import Frame, capture_stack
from pytest_dbleak.engine.threads import ThreadStarts

# The records live in records.py; named here too, where the detector has always found them.
__all__ = [
    "Checkout",
    "ConnState",
    "Frame",
    "Opened",
    "PoolState",
    "Tracker",
    "capture_stack",
    "server_thread_id",
]


class Tracker(Instrumentation):
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
        # What the tracker knows of each pool, without writing onto SQLAlchemy's objects.
        self.states: weakref.WeakKeyDictionary[Pool, PoolState] = weakref.WeakKeyDictionary()
        self.gc_returns: deque[GcReturn] = deque(maxlen=10_000)
        self.closed_thread_ids: deque[tuple[int, int]] = deque(maxlen=10_000)  # (seq, id)
        # Raw driver connections and drivers' own pools: what SQLAlchemy's events miss.
        self.raw = RawConnections(
            self.tick, lambda: self.threads.blamed(), lambda: self.owner_active
        )
        self.drivers = DriverTracer(
            self._on_driver_connect,
            self._on_driver_close,
            self.raw.handout,
            self.raw.pool_created,
        )
        # A driver first imported between two windows (in a wider fixture that builds its
        # pool with it) is traced at once, not from the next window on.
        self.import_watch = ImportWatch(driver_packages(), self.drivers.trace_imported)
        self._owner_depth = 0
        self._unknown_pool: PoolState | None = None
        # The sequence number at which lost instrumentation was last put back: events
        # before it may be missing, so a window open then is judged on the server only.
        self.lost_seq = -1
        self.lost: list[str] = []  # what was found removed, the last time
        self.children = Children()
        self.children.on_fork.append(self._after_fork_in_child)
        self.threads = ThreadStarts(self.tick, lambda: self.owner_active)

    # -- sequence and ownership -------------------------------------------------
    def tick(self) -> int:
        self.seq = next(self._seq)
        return self.seq

    def mark(self) -> int:
        """A sequence number strictly before everything that happens from now on."""
        # A driver imported since the last window is traced from now on; the check is a
        # few dictionary lookups.
        self.drivers.trace_imported()
        self.children.trace_imported()
        self.verify()
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

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork: it would never be released.
        self._lock = threading.RLock()
        self.raw.after_fork_in_child()

    # -- pools -----------------------------------------------------------------
    def _on_pool_created(self, pool: Pool, recreated_from: Any) -> None:
        # Called from Pool.__new__, before the pool's __init__ ran.
        origin = self._recreated(recreated_from) if recreated_from is not None else None
        with self._lock:
            seq = self.tick()
            state = PoolState(
                next(self._serial),
                seq,
                self.owner_active,
                capture_stack(2),
                type(pool).__name__,
                weakref.ref(pool),
                threading.current_thread().name,
            )
            state.registered_seq = seq
            state.late_for = self.threads.blamed()
            self.states[pool] = state
            self.pools.append(state)
            self._trim_pools()
            if origin is not None and isinstance(origin.listener, _ConnectListener):
                # Pool.recreate() (Engine.dispose()): same engine, same owner. __init__
                # copies the replaced pool's listeners, ours among them: that one serves
                # the new pool from now on, so an engine disposed a thousand times still
                # has one listener.
                self._adopt(state, origin)
                origin.listener.state = weakref.ref(state)
                state.listener = origin.listener
                return
            state.listener = _ConnectListener(self, state)
        seam.listen_connect(pool, state.listener)

    def _recreated(self, dispatch: Any) -> PoolState | None:
        """The tracked pool whose dispatch `dispatch` is: the one recreate() replaces."""
        with self._lock:
            candidates = list(self.states.items())
        for pool, state in candidates:
            if seam.dispatch_of(pool) is dispatch:
                return state
        return None

    @staticmethod
    def _adopt(state: PoolState, origin: PoolState) -> None:
        if state.origin is None:
            state.origin = origin
            state.created_seq, state.owned = origin.created_seq, origin.owned
            state.stack, state.thread = origin.stack, origin.thread

    def state_of(self, pool: Pool) -> PoolState:
        with self._lock:
            state = self.states.get(pool)
            if state is not None:
                return state
            # Created before install(): treat as pre-existing, owned by nobody in a window.
            state = PoolState(
                next(self._serial), -1, True, (), type(pool).__name__, weakref.ref(pool)
            )
            state.listener = _ConnectListener(self, state)
            self.states[pool] = state
        seam.listen_connect(pool, state.listener)
        return state

    def forget_since(self, mark: int, pools: tuple[Pool, ...]) -> None:
        """Forget `pools` and what happened since `mark` (the install proof's throw-aways)."""
        with self._lock:
            self.open = {k: c for k, c in self.open.items() if c.created_seq < mark}
            for pool in pools:
                seam.remove_connect(pool, self.states.pop(pool).listener)
            self.pools = [s for s in self.pools if s.registered_seq < mark]

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
    def _on_connect(self, pstate: PoolState, dbapi_connection: Any) -> None:
        if not self.installed:
            return
        stack = capture_stack(2)
        with self._lock:
            known = self._known(dbapi_connection)
            if known is not None:
                # A recreated pool also runs the listener it inherited: the connection is
                # the newer pool's, and the older one is where it came from.
                if known.pool is not pstate:
                    older, newer = sorted((known.pool, pstate), key=lambda s: s.registered_seq)
                    self._adopt(newer, older)
                    if known.pool is older:
                        older.open.pop(known.serial, None)
                        known.pool = newer
                        newer.open[known.serial] = known
                return
            self._new_conn(dbapi_connection, pstate, self.tick(), stack)

    def _known(self, dbapi_connection: Any) -> ConnState | None:
        state = self.open.get(id(dbapi_connection))
        if state is not None and state.ref is not None and state.ref() is not dbapi_connection:
            return None  # the id was reused by a new object
        return state

    def _new_conn(
        self, dbapi_connection: Any, pstate: PoolState, seq: int, stack: tuple[Frame, ...]
    ) -> ConnState:
        try:
            ref: Callable[[], Any] | None = weakref.ref(dbapi_connection)
        except TypeError:
            ref = None
        state = ConnState(
            next(self._serial),
            pstate,
            server_thread_id(dbapi_connection),
            seq,
            self.owner_active or pstate.created_seq < 0,
            stack,
            ref,
            real=is_real_connection(dbapi_connection),
        )
        self.open[id(dbapi_connection)] = state
        pstate.open[state.serial] = state
        if state.thread_id is not None:
            self.by_thread_id[state.thread_id] = state
        if stack and self.children.in_child:
            self.children.report(CONNECT, state.thread_id, stack)
        return state

    def _conn(self, dbapi_connection: Any, record: Any) -> ConnState | None:
        if dbapi_connection is None:
            return None
        state = self._known(dbapi_connection)
        if state is None:
            pool = seam.pool_of_record(record)
            pstate = self.states.get(pool) if pool is not None else None
            if pstate is None or pstate.created_seq < 0:
                # Opened before install() by a pool created before it: its pool is unknown.
                return self._new_conn(dbapi_connection, self._unknown(), -1, ())
            # A pool of ours opened it without telling us: somebody removed its connect
            # listener. Put it back; events before now may be missing.
            if pool is not None and not seam.has_connect(pool, pstate.listener):
                seam.listen_connect(pool, pstate.listener)
            self.lost_seq = self.tick()
            self.lost = [f"connect listener of {pstate.pool_class}"]
            state = self._new_conn(dbapi_connection, pstate, self.lost_seq, ())
        return state

    def _unknown(self) -> PoolState:
        if self._unknown_pool is None:
            self._unknown_pool = PoolState(
                next(self._serial),
                -1,
                True,
                (),
                "a pool created before the session",
                lambda: None,
            )
        return self._unknown_pool

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
                self.tick(),
                stack,
                threading.current_thread().name,
                self.owner_active,
                fairy,
                self.threads.blamed(),
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
        children = self.children
        if children.in_child and state.created_seq < children.fork_seq and checkout is not None:
            # The fork bug: this process uses a pooled connection its parent opened (and
            # got through to the checkin, so no pid check in a checkout event stopped it).
            children.report(FORK_SHARED, state.thread_id, checkout.stack, state.stack)
        # Only what the driver already knows: nothing runs through the user's connection.
        # An implicit transaction the status flag does not show (MariaDB, autocommit off,
        # then a SELECT) survives only a pool that does not reset on return: the detector
        # asks the server about those from its own connection, when it judges.
        trx = in_transaction(dbapi_connection)
        state.in_trx = bool(trx)
        state.ask_trx = not trx and state.thread_id is not None and not pstate.resets_on_return

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self._forget(dbapi_connection)

    def _on_detach(self, dbapi_connection: Any, record: Any) -> None:
        with self._lock:
            state = self.open.get(id(dbapi_connection))
            if state is None:
                return
            state.detached = True
            checkout = state.checkout
            if checkout is not None and checkout.fairy is not None and checkout.fairy() is None:
                # An async pool cannot return a connection the garbage collector found
                # checked out (no I/O outside the greenlet): it detaches and terminates
                # it, where a sync pool would check it in. Dropped without close() all
                # the same: e.g. a task cancelled while holding an AsyncConnection.
                state.checkout, state.last_checkout = None, checkout
                self.gc_returns.append(GcReturn(self.tick(), checkout, state))

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        self._forget(dbapi_connection)

    def _on_driver_connect(self, dbapi_connection: Any, stack: tuple[Frame, ...]) -> None:
        ident = self.raw.connected(dbapi_connection, stack)
        if ident is not None and self.children.in_child:
            self.children.report(CONNECT, ident, stack)

    @property
    def driver_pools(self) -> list[DriverPoolState]:
        """Drivers' own pools still alive (or not yet pruned), in creation order."""
        return self.raw.pools

    def handed_out_objects(self) -> list[Any]:
        """What drivers' pools handed out and is still referenced (their wrappers)."""
        return self.raw.handed_out_objects()

    def _on_driver_close(self, ident: int | None) -> None:
        if ident is None:
            return
        self.raw.closed(ident)
        with self._lock:
            self.closed_thread_ids.append((self.tick(), ident))
            conn = self.by_thread_id.get(ident)
        if conn is not None and conn.detached and conn.ref is not None:
            # Detached from its pool, then closed by its owner: the pool will never send
            # a close event for it, and nothing is left.
            dbapi = conn.ref()
            if dbapi is not None:
                self._forget(dbapi)

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
            return {s.serial for s in self.open.values() if s.checkout is None and s.in_trx}

    def gc_returns_since(self, seq: int) -> list[GcReturn]:
        with self._lock:
            return [g for g in self.gc_returns if g.checkout.seq >= seq]

    def opened_at(self, ident: int) -> Opened | None:
        """Where the driver connection with server thread id `ident` was opened, if seen."""
        return self.raw.opened_at(ident)

    def handed_out_since(self, ident: int, seq: int) -> Opened | None:
        """Where a driver's own pool last handed out connection `ident`, if since `seq`."""
        return self.raw.handed_out_since(ident, seq)

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


class _ConnectListener:
    """A pool's connect listener; it knows its pool's state, which Engine.dispose() moves
    on to the recreated pool (see Tracker._on_pool_created)."""

    __slots__ = ("__weakref__", "state", "tracker")

    def __init__(self, tracker: Tracker, state: PoolState) -> None:
        self.tracker = tracker
        self.state: Callable[[], PoolState | None] = weakref.ref(state)

    def __call__(self, dbapi_connection: Any, record: Any) -> None:
        state = self.state()
        if state is not None:
            self.tracker._on_connect(state, dbapi_connection)
