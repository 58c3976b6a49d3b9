"""Drivers' own pools (aiomysql, asyncmy, mysql-connector, MariaDB Connector): which
classes they are, and how their idle and handed-out connections are read from their
attributes when a test is judged. ``drivers.DriverTracer`` records their creation.

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
    used: str | None  # of those handed out; None: known from the handouts (see used_of)
    checked_on: str


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
    """The connections `pool` handed out that were not given back, from the handouts
    (mysql-connector's PooledMySQLConnection: ``_cnx_pool``, ``_cnx`` is None once
    closed; checked on mysql-connector-python 26.10.0)."""
    return [
        cnx
        for h in handouts
        if getattr(h, "_cnx_pool", None) is pool and (cnx := getattr(h, "_cnx", None)) is not None
    ]
