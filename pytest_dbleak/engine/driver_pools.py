"""Drivers' own pools (aiomysql, asyncmy, mysql-connector, MariaDB Connector; asyncpg,
psycopg_pool): which classes they are, and how their idle and handed-out connections are
read from their attributes when a test is judged. ``drivers.DriverTracer`` records their
creation, and the acquires of some (PostgreSQL's: ``postgresql_drivers.HANDOUTS``).

No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_dbleak.engine.stacks import Frame


@dataclass(frozen=True)
class PoolTarget:
    """A driver's own pool class: its creation is recorded, and its connections are read
    from its attributes when a test is judged (idle ones are the pool's, not leaks)."""

    package: str
    module: str
    cls: str
    idle: str  # attribute path of the idle connections
    used: str | None  # of those handed out; None: known from the handouts (handed_out_by)
    checked_on: str
    # Where no attribute path lists them (asyncpg's holders): reads (idle, handed out)
    # itself; an AttributeError says the attributes are gone, as for a path.
    reader: Callable[[Any], tuple[list[Any], list[Any] | None]] | None = None
    # The class whose creation is recorded in the pool's stead, where the pool takes no
    # weak reference (asyncpg's: __slots__ without __weakref__); the reader gets that.
    stand_in: str | None = None

    @property
    def traced(self) -> str:
        """The class whose __init__ is traced."""
        return self.stand_in or self.cls


def _asyncpg_holders(holder: Any) -> tuple[list[Any], list[Any] | None]:
    # asyncpg's Pool keeps one PoolConnectionHolder per slot (``_holders``, made once, when
    # it is first awaited): its ``_con`` is the connection (None before it connects and
    # once it closed), its ``_in_use`` a future while the connection is handed out. Each
    # holds its pool (``_pool``) and lives as long as it: a holder stands in for the pool,
    # and the first of them reads for all. Checked on asyncpg 0.32.0.
    holders = list(holder._pool._holders)  # a copy: the event loop may add to it meanwhile
    idle: list[Any] = []
    used: list[Any] = []
    if not holders or holders[0] is not holder:
        return idle, used
    for each in holders:
        con = each._con
        if con is not None:
            (used if each._in_use is not None else idle).append(con)
    return idle, used


def _psycopg_pool(pool: Any) -> tuple[list[Any], list[Any] | None]:
    # psycopg_pool keeps its idle connections in the deque ``_pool`` and does not list those
    # handed out: each of those names its pool in ``_pool`` until given back (None while
    # idle), which handed_out_by reads - so an idle one without the attribute says it is
    # gone. Checked on psycopg-pool 3.3.3 with psycopg 3.3.9.
    idle = list(pool._pool)  # list() of a deque holds the GIL: a worker may add meanwhile
    if any(not hasattr(conn, "_pool") for conn in idle):
        raise AttributeError(name="connection._pool")
    return idle, None


# Each checked on the version it names.
POOLS = (
    PoolTarget("aiomysql", "aiomysql.pool", "Pool", "_free", "_used", "aiomysql 0.3.2"),
    PoolTarget("asyncmy", "asyncmy.pool", "Pool", "_free", "_used", "asyncmy 0.2.18"),
    PoolTarget(
        "mysql.connector",
        "mysql.connector.pooling",
        "MySQLConnectionPool",
        "_cnx_queue.queue",
        None,
        "mysql-connector-python 26.10.0",
    ),
    PoolTarget(
        "mariadb",
        "mariadb.connectionpool",
        "ConnectionPool",
        "_connections_free",
        "_connections_used",
        "mariadb 1.1.14",
    ),
    PoolTarget(
        "asyncpg",
        "asyncpg.pool",
        "Pool",
        "_holders",
        "_holders",
        "asyncpg 0.32.0",
        reader=_asyncpg_holders,
        stand_in="PoolConnectionHolder",
    ),
    # The sync and the asyncio pool are two classes (neither derives from the other).
    *(
        PoolTarget(
            "psycopg_pool",
            "psycopg_pool",
            cls,
            "_pool",
            None,
            "psycopg-pool 3.3.3",
            reader=_psycopg_pool,
        )
        for cls in ("ConnectionPool", "AsyncConnectionPool")
    ),
)

OnPool = Callable[[Any, "PoolTarget", tuple[Frame, ...]], None]


def _attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def pool_connections(pool: Any, target: PoolTarget) -> tuple[list[Any], list[Any] | None]:
    """(idle, handed out) connections of a driver's pool; handed out is None when the pool
    does not list them (mysql-connector: its handouts say). Empty once the pool closed.

    Raises DriverPoolMisfit when the attributes are not there any more."""
    try:
        if target.reader is not None:
            return target.reader(pool)
        idle = _attr(pool, target.idle)
        used = _attr(pool, target.used) if target.used is not None else None
    except AttributeError as exc:
        raise DriverPoolMisfit(
            f"{target.module}.{target.cls} has no {exc.name or target.idle} "
            f"(checked on {target.checked_on})"
        ) from None
    return list(idle or ()), (list(used or ()) if target.used is not None else None)


class DriverPoolMisfit(RuntimeError):
    pass


def handed_out_by(pool: Any, handouts: list[Any]) -> list[Any]:
    """The connections `pool` handed out that were not given back, from the handouts:
    mysql-connector's PooledMySQLConnection (``_cnx_pool``, ``_cnx`` is None once closed;
    checked on mysql-connector-python 26.10.0), psycopg's connection out of psycopg_pool
    (``_pool`` is the pool until given back; checked on psycopg-pool 3.3.3)."""
    used = []
    for h in handouts:
        if getattr(h, "_cnx_pool", None) is pool:
            if (cnx := getattr(h, "_cnx", None)) is not None:
                used.append(cnx)
        elif getattr(h, "_pool", None) is pool:
            used.append(h)
    return used
