"""The plugin's own connection to the server: snapshots, provisioning, clean-up.

No pytest import. One PyMySQL connection per process, in autocommit mode, with a
short lock wait so that our DDL can never hang behind a lock a leaky test left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import DbleakError, ServerGoneError

log = logging.getLogger(__name__)

# Threads the server lists that are not client connections.
_SYSTEM_USERS = frozenset({"system user", "event_scheduler", "unauthenticated user"})
_SYSTEM_COMMANDS = frozenset({"Daemon", "Binlog Dump", "Slave_IO", "Slave_SQL", "Slave_worker"})
LOCK_WAIT_TIMEOUT = 5


@dataclass(frozen=True)
class ProcessRow:
    """One row of the server's processlist."""

    id: int
    user: str
    host: str
    db: str | None
    command: str
    time: int
    state: str | None
    info: str | None = None
    trx_started: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "user": self.user, "host": self.host, "db": self.db,
            "command": self.command, "time": self.time, "state": self.state,
            "info": self.info, "trx_started": self.trx_started,
        }


@dataclass(frozen=True)
class ServerSnapshot:
    """The server's client connections at one instant (one processlist read)."""

    rows: dict[int, ProcessRow] = field(default_factory=dict)
    threads_connected: int = 0
    taken_at: float = 0.0

    def ids_of(self, users: frozenset[str] | None) -> set[int]:
        return {r.id for r in self.rows.values() if users is None or r.user in users}


@dataclass(frozen=True)
class Endpoint:
    """How to reach a server as its administrator."""

    host: str
    port: int
    user: str
    password: str
    unix_socket: str | None = None

    @property
    def is_local(self) -> bool:
        return self.unix_socket is not None or self.host in ("127.0.0.1", "localhost", "::1")

    def connect(
        self, *, database: str | None = None, timeout: float = 5.0, read_timeout: float = 30
    ) -> Any:
        kwargs: dict[str, Any] = {
            "user": self.user, "password": self.password, "database": database,
            "autocommit": True, "connect_timeout": max(0.5, timeout),
            "read_timeout": read_timeout, "write_timeout": 30, "charset": "utf8mb4",
            "init_command": (
                f"SET SESSION lock_wait_timeout={LOCK_WAIT_TIMEOUT}, "
                f"SESSION innodb_lock_wait_timeout={LOCK_WAIT_TIMEOUT}"
            ),
        }
        if self.unix_socket:
            kwargs["unix_socket"] = self.unix_socket
        else:
            kwargs["host"], kwargs["port"] = self.host, self.port
        if self.is_local:
            # PyMySQL >= 1.2 builds an SSL context per connect unless told not to (~19 ms).
            kwargs["ssl_disabled"] = True
        import pymysql  # on first use: a run that never needs a server does not pay it

        return pymysql.connect(**kwargs)


class Monitor:
    """An administrative connection used for snapshots and for our own DDL."""

    def __init__(self, endpoint: Endpoint, where: str) -> None:
        self.endpoint = endpoint
        self.where = where  # "host:port" for messages; never includes a password
        self._lock = threading.Lock()
        self._conn: Any = endpoint.connect()
        self.connection_id: int = self._conn.thread_id()
        self.version: str = self._conn.get_server_info()
        self.is_mariadb = "mariadb" in self.version.lower()

    def close(self) -> None:
        import pymysql

        # Already gone means nothing is left to release.
        with self._lock, contextlib.suppress(pymysql.err.Error):
            self._conn.close()

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        import pymysql

        with self._lock:
            try:
                with self._conn.cursor() as cursor:
                    cursor.execute(sql, args)
                    return list(cursor.fetchall())
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                if _is_disconnect(exc):
                    raise ServerGoneError(
                        f"the MySQL server at {self.where} stopped answering ({_reason(exc)})"
                    ) from None
                raise

    def snapshot(self) -> ServerSnapshot:
        """Every client connection but ours: one round trip (SHOW PROCESSLIST)."""
        rows: dict[int, ProcessRow] = {}
        for row in self.query("SHOW PROCESSLIST"):
            ident, user, host, db, command, seconds, state, info = row[:8]
            if ident == self.connection_id or user in _SYSTEM_USERS:
                continue
            if command in _SYSTEM_COMMANDS:
                continue
            rows[int(ident)] = ProcessRow(
                int(ident), user, host or "", db, command, int(seconds or 0), state or None,
                _shorten(info),
            )
        # Threads_connected counts our own connection too.
        return ServerSnapshot(rows, len(rows) + 1, time.monotonic())

    def open_transactions(self, ids: set[int]) -> dict[int, str]:
        """Start time of the open InnoDB transaction of each connection in `ids`.

        INNODB_TRX is a cache refreshed at most every 0.1 s: use it to describe a leak,
        never as the only evidence for one.
        """
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))
        rows = self.query(
            "SELECT trx_mysql_thread_id, trx_started FROM information_schema.INNODB_TRX "
            f"WHERE trx_mysql_thread_id IN ({marks})",
            tuple(sorted(ids)),
        )
        return {int(r[0]): str(r[1]) for r in rows}

    # -- provisioning ----------------------------------------------------------
    def create_database(self, database: str, user: str, password: str, host: str) -> None:
        self.query(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        self.query(f"CREATE USER '{user}'@'{_escape(host)}' IDENTIFIED BY %s", (password,))
        self.query(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'{host}'")

    def claim(self, name: str) -> None:
        """Hold a server-side lock named after a session while this connection lives.

        The server releases it when the connection dies, however pytest ended: a free
        lock marks a session's leftovers for ``sweep_orphans``.
        """
        held = self.query("SELECT GET_LOCK(%s, 0)", (_lock_name(name),))[0][0]
        if held != 1:
            raise DbleakError(f"the session lock of {name} is held by another connection")

    def sweep_orphans(self) -> list[str]:
        """Drop the databases and users of dbleak sessions whose lock is free (killed runs).

        Only names of the form our sessions use; a live session holds its lock, and takes
        it before creating anything, so nothing of a running session is touched.
        """
        import pymysql

        names = {r[0] for r in self.query(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
            ("dbleak\\_%",),
        )}
        users: set[tuple[str, str]] = set()
        try:
            users = {(r[0], r[1]) for r in self.query(
                "SELECT User, Host FROM mysql.user WHERE User LIKE %s", ("dbleak\\_%",)
            )}
        except pymysql.err.Error as exc:  # no SELECT on mysql.user: databases only
            log.info("dbleak: cannot list users for the sweep: %s", exc)
        candidates = {n for n in names | {u for u, _ in users} if _SESSION_NAME.match(n)}
        swept = []
        for name in sorted(candidates):
            if self.query("SELECT IS_FREE_LOCK(%s)", (_lock_name(name),))[0][0] != 1:
                continue
            self.kill_connections_of(name)
            for user, host in users:
                if user == name:
                    self.query(f"DROP USER IF EXISTS '{user}'@'{host}'")  # no args: no %-format
            self.query(f"DROP DATABASE IF EXISTS `{name}`")
            swept.append(name)
        return swept

    def drop_database(self, database: str, user: str, host: str) -> None:
        self.kill_connections_of(user)
        self.query(f"DROP USER IF EXISTS '{user}'@'{host}'")
        self.query(f"DROP DATABASE IF EXISTS `{database}`")

    def kill_connections_of(self, user: str) -> int:
        import pymysql

        killed = 0
        for row in self.query("SHOW PROCESSLIST"):
            if row[1] == user and row[0] != self.connection_id:
                try:
                    self.query(f"KILL CONNECTION {int(row[0])}")
                    killed += 1
                except pymysql.err.OperationalError:
                    pass  # it ended on its own meanwhile
        return killed


# The names ensure_database gives a session's database and user: dbleak_<worker>_<hex6>.
_SESSION_NAME = re.compile(r"^dbleak_[A-Za-z0-9]{1,8}_[0-9a-f]{6}$")


def _lock_name(name: str) -> str:
    return f"pytest-dbleak:{name}"


def _escape(text: str) -> str:
    # The statement goes through PyMySQL's %-formatting because it carries a parameter.
    return text.replace("%", "%%")


def _shorten(info: Any, limit: int = 200) -> str | None:
    if info is None:
        return None
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_disconnect(exc: Exception) -> bool:
    import pymysql

    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return isinstance(exc, pymysql.err.InterfaceError) or code in (2003, 2006, 2013, 2055, 1927)


def _reason(exc: Exception) -> str:
    if len(exc.args) >= 2:
        return str(exc.args[1]).splitlines()[0]
    return type(exc).__name__
