"""What the drivers tell beside SQLAlchemy's pools: connections a driver opened (raw, or
for its own pool), what a driver's own pool handed out, and those pools themselves.

``drivers.DriverTracer`` calls in here; the ``Tracker`` owns one and answers the
detector's questions from it. Keyed by the server's connection id; bounded, so that a
process that opens millions of raw connections keeps the last ten thousand.

No pytest import.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pytest_dbleak.engine.driver_pools import PoolTarget
from pytest_dbleak.engine.drivers import server_thread_id
from pytest_dbleak.engine.records import DriverPoolState, Opened
from pytest_dbleak.engine.stacks import Frame

_OPENED_LIMIT = 10_000


class RawConnections:
    """The record of driver connections and drivers' own pools (see the module)."""

    def __init__(
        self,
        tick: Callable[[], int],
        blamed: Callable[[], str | None],
        owner_active: Callable[[], bool],
    ) -> None:
        self._tick = tick  # the tracker's sequence: one order for every event
        self._blamed = blamed  # the test a thread that outlived it is blamed on
        self._owner_active = owner_active
        self.lock = threading.RLock()
        self.opened: OrderedDict[int, Opened] = OrderedDict()  # server thread id -> site
        self.handed_out: OrderedDict[int, Opened] = OrderedDict()  # by a driver's own pool
        self.pools: list[DriverPoolState] = []

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork: it would never be released.
        self.lock = threading.RLock()

    # -- what the drivers tell -------------------------------------------------------------
    def connected(self, dbapi_connection: Any, stack: tuple[Frame, ...]) -> int | None:
        """A driver connection was opened; its server id, when the driver tells it."""
        ident = server_thread_id(dbapi_connection)
        if ident is None:
            return None
        with self.lock:
            self.opened[ident] = Opened(
                self._tick(),
                stack,
                threading.current_thread().name,
                _weak(dbapi_connection),
                self._blamed(),
            )
            while len(self.opened) > _OPENED_LIMIT:
                self.opened.popitem(last=False)
        return ident

    def handout(self, pooled: Any, stack: tuple[Frame, ...]) -> None:
        """A driver's own pool handed out a connection (its wrapper, for some)."""
        ident = server_thread_id(pooled)
        if ident is None:
            return
        with self.lock:
            self.handed_out[ident] = Opened(
                self._tick(),
                stack,
                threading.current_thread().name,
                _weak(pooled),
                self._blamed(),
            )
            self.handed_out.move_to_end(ident)
            while len(self.handed_out) > _OPENED_LIMIT:
                self.handed_out.popitem(last=False)

    def pool_created(self, pool: Any, target: PoolTarget, stack: tuple[Frame, ...]) -> None:
        state = DriverPoolState(
            self._tick(),
            self._owner_active(),
            stack,
            threading.current_thread().name,
            weakref.ref(pool),
            target,
            self._blamed(),
        )
        with self.lock:
            self.pools = [p for p in self.pools if p.ref() is not None]
            self.pools.append(state)

    def closed(self, ident: int) -> None:
        with self.lock:
            self.opened.pop(ident, None)
            self.handed_out.pop(ident, None)

    # -- what the detector asks ------------------------------------------------------------
    def handed_out_objects(self) -> list[Any]:
        """What drivers' pools handed out and is still referenced (their wrappers)."""
        with self.lock:
            refs = [h.ref for h in self.handed_out.values() if h.ref is not None]
        return [obj for ref in refs if (obj := ref()) is not None]

    def opened_at(self, ident: int) -> Opened | None:
        with self.lock:
            return self.opened.get(ident)

    def handed_out_since(self, ident: int, seq: int) -> Opened | None:
        with self.lock:
            handout = self.handed_out.get(ident)
        return handout if handout is not None and handout.seq >= seq else None


def _weak(obj: Any) -> Callable[[], Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:  # a driver class without __weakref__: its holder cannot be watched
        return None
