"""The session database as each driver spells it: SQLAlchemy URLs, connect kwargs.

Every driver has its own keyword for "no TLS on a local server" (and PyMySQL >= 1.2
builds an SSL context per connect unless told): one table per server family here, so
that a user of aiomysql or psycopg2 never strips PyMySQL's ``ssl_disabled`` or
libpq's ``sslmode`` by hand. One ``Database`` type serves every family: it knows its
family's table and default driver.

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
    charset: bool = True  # takes charset=utf8mb4 (MySQL's drivers)


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
# libpq's drivers (psycopg, psycopg2) try TLS first by default (sslmode=prefer): a local
# server without it costs a refused handshake per connect. asyncpg takes the same words
# as its `ssl`; pg8000 uses no TLS unless given an SSL context.
POSTGRESQL_DRIVERS: dict[str, _Driver] = {
    "psycopg": _Driver(
        "postgresql+psycopg", "dbname", {"sslmode": "disable"}, {"sslmode": "disable"}, False
    ),
    "psycopg2": _Driver(
        "postgresql+psycopg2", "dbname", {"sslmode": "disable"}, {"sslmode": "disable"}, False
    ),
    "asyncpg": _Driver(
        "postgresql+asyncpg", "database", {"ssl": "disable"}, {"ssl": "disable"}, False
    ),
    "pg8000": _Driver("postgresql+pg8000", "database", {}, {}, charset=False),
}
# Each family's drivers, and the one a plain url() means (the family's admin driver).
FAMILY_DRIVERS: dict[str, dict[str, _Driver]] = {
    "mysql": DRIVERS,
    "postgresql": POSTGRESQL_DRIVERS,
}
DEFAULT_DRIVER = {"mysql": "pymysql", "postgresql": "psycopg"}
_TITLES = {"mysql": "MySQL", "postgresql": "PostgreSQL"}
# Names people also use for the same drivers.
_ALIASES = {
    "mysqlclient": "mysqldb",
    "mysql-connector": "mysqlconnector",
    "mysql.connector": "mysqlconnector",
    "mariadb": "mariadbconnector",
    "psycopg3": "psycopg",
    "psycopg2-binary": "psycopg2",
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
    family: str = "mysql"  # whose drivers: "mysql" or "postgresql"

    def url(self, driver: str | None = None) -> str:
        """SQLAlchemy URL of the database for `driver`: MySQL's pymysql (the default),
        aiomysql, asyncmy, mysqldb, mysqlconnector, mariadbconnector; PostgreSQL's
        psycopg (the default), psycopg2, asyncpg, pg8000."""
        from sqlalchemy.engine import URL

        spec = self._driver(driver)
        query = {"charset": "utf8mb4"} if spec.charset else {}
        if self.local:
            query.update(spec.no_tls_url)
        return URL.create(
            spec.dialect,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.name or None,  # "": the server, no database (an admin URL)
            query=query,
        ).render_as_string(hide_password=False)

    def connect_kwargs(self, driver: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `driver`'s own ``connect()`` (the family's default
        driver when not named)."""
        spec = self._driver(driver)
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

    def _driver(self, name: str | None) -> _Driver:
        return _driver(name or DEFAULT_DRIVER[self.family], self.family)


def _driver(name: str, family: str = "mysql") -> _Driver:
    drivers = FAMILY_DRIVERS[family]
    key = _ALIASES.get(name.lower(), name.lower())
    key = key.split("+", 1)[-1]  # "mysql+aiomysql", "postgresql+asyncpg" work too
    if key not in drivers:
        raise DbleakError(
            f"unknown driver {name!r}; one of: {', '.join(drivers)} (the {_TITLES[family]} drivers)"
        )
    return drivers[key]
