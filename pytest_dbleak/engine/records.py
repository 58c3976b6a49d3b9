"""What the tracker records of pools and connections (``tracking.Tracker`` keeps them).

Plain data: the detector, the lock watch and the containment read these; only the
tracker writes them. No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.pool import Pool

from pytest_dbleak.engine import _sqla_seam as seam
from pytest_dbleak.engine.driver_pools import PoolTarget
from pytest_dbleak.engine.stacks import Frame

__all__ = ["Checkout", "ConnState", "DriverPoolState", "GcReturn", "Opened", "PoolState"]


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
    listener: Callable[..., None] = field(default=lambda *a: None, repr=False)
    origin: PoolState | None = None  # the pool that recreate() built this one from
    late_for: str | None = None  # created by a thread that outlived this test's window

    @property
    def alive(self) -> bool:
        return self.ref() is not None

    @property
    def resets_on_return(self) -> bool:
        pool = self.ref()
        return pool is None or seam.resets_on_return(pool)


@dataclass(eq=False)
class Checkout:
    seq: int
    stack: tuple[Frame, ...]
    thread: str
    owned: bool
    fairy: Callable[[], Any] | None  # weak reference to the pool's connection proxy
    late_for: str | None = None  # taken by a thread that outlived this test's window


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
    # A connection of a real driver (or SQLite): only these hold a resource. A Mock or a
    # test suite's fake DBAPI never counts as a leak.
    real: bool = True
    # Given back to a pool that does not reset it, with no transaction the driver knows
    # of: whether an implicit one is open is asked of the server when judging.
    ask_trx: bool = False

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
    # A weak reference to the driver's connection, where it takes one: whether its holder
    # is gone (see Detector.reclaim).
    ref: Callable[[], Any] | None = field(default=None, compare=False)
    late_for: str | None = None  # opened by a thread that outlived this test's window


@dataclass(eq=False)
class DriverPoolState:
    """A driver's own pool (aiomysql, asyncmy, mysql-connector, MariaDB Connector; asyncpg,
    psycopg_pool): see driver_pools.POOLS."""

    seq: int
    owned: bool  # created while a wider-scoped fixture was being set up
    stack: tuple[Frame, ...]
    thread: str
    ref: Callable[[], Any]
    target: PoolTarget
    late_for: str | None = None

    @property
    def kind(self) -> str:
        return f"{self.target.package} {self.target.cls}"


@dataclass(frozen=True)
class GcReturn:
    """A checked-out connection given back by the garbage collector, not by close()."""

    seq: int
    checkout: Checkout
    conn: ConnState
