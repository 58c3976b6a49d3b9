"""The session database as each MySQL driver spells it: SQLAlchemy URLs, connect kwargs.

Every driver has its own keyword for "no TLS on a local server" (and PyMySQL >= 1.2
builds an SSL context per connect unless told): one table here, so that a user of
aiomysql or mysqlclient never strips PyMySQL's ``ssl_disabled`` by hand.

No pytest import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_dbleak.engine.errors import DbleakError


@dataclass(frozen=True)
class _Driver:
    dialect: str  # SQLAlchemy drivername
    database_kw: str  # the connect() keyword that names the database
    no_tls_url: dict[str, str]  # URL query that turns TLS off
    no_tls_kwargs: dict[str, Any]  # connect() keywords that turn TLS off
    charset: bool = True  # takes charset=utf8mb4


# Drivers with no TLS unless asked (aiomysql, asyncmy: ssl=None) need no keyword.
DRIVERS: dict[str, _Driver] = {
    "pymysql": _Driver(
        "mysql+pymysql", "database", {"ssl_disabled": "true"}, {"ssl_disabled": True}
    ),
    "aiomysql": _Driver("mysql+aiomysql", "db", {}, {}),
    "asyncmy": _Driver("mysql+asyncmy", "database", {}, {}),
    "mysqldb": _Driver(
        "mysql+mysqldb", "database", {"ssl_mode": "DISABLED"}, {"ssl_mode": "DISABLED"}
    ),
    "mysqlconnector": _Driver(
        "mysql+mysqlconnector", "database", {"ssl_disabled": "true"}, {"ssl_disabled": True}
    ),
    "mariadbconnector": _Driver(
        "mariadb+mariadbconnector", "database", {"ssl": "false"}, {"ssl": False}, charset=False
    ),
}
# Names people also use for the same drivers.
_ALIASES = {
    "mysqlclient": "mysqldb",
    "mysql-connector": "mysqlconnector",
    "mysql.connector": "mysqlconnector",
    "mariadb": "mariadbconnector",
}


@dataclass(frozen=True)
class Database:
    """The session's database and its own user (the ``dbleak_database`` fixture)."""

    name: str
    user: str
    password: str = field(repr=False)
    host: str
    port: int
    local: bool = True  # a server on this machine: no TLS

    def url(self, driver: str = "pymysql") -> str:
        """SQLAlchemy URL of the database for `driver` (pymysql, aiomysql, asyncmy,
        mysqldb, mysqlconnector, mariadbconnector)."""
        from sqlalchemy.engine import URL

        spec = _driver(driver)
        query = {"charset": "utf8mb4"} if spec.charset else {}
        if self.local:
            query.update(spec.no_tls_url)
        return URL.create(
            spec.dialect,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.name,
            query=query,
        ).render_as_string(hide_password=False)

    def connect_kwargs(self, driver: str = "pymysql") -> dict[str, Any]:
        """Keyword arguments for `driver`'s own ``connect()``."""
        spec = _driver(driver)
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            spec.database_kw: self.name,
        }
        if spec.charset:
            kwargs["charset"] = "utf8mb4"
        if self.local:
            kwargs.update(spec.no_tls_kwargs)
        return kwargs


def _driver(name: str) -> _Driver:
    key = _ALIASES.get(name.lower(), name.lower())
    key = key.split("+", 1)[-1]  # "mysql+aiomysql" works too
    if key not in DRIVERS:
        raise DbleakError(f"unknown driver {name!r}; one of: {', '.join(DRIVERS)}")
    return DRIVERS[key]
