"""The plugin's own connection to the server: snapshots, provisioning, clean-up.

No pytest import. One PyMySQL connection per process, in autocommit mode, with a
short lock wait so that our DDL can never hang behind a lock a leaky test left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from pytest_dbleak.engine.errors import DbleakError, ServerGoneError
from pytest_dbleak.families.base import Holder, ProcessRow, ServerSnapshot, TrxInfo, Waiting

log = logging.getLogger(__name__)

# Threads the server lists that are not client connections.
_SYSTEM_USERS = frozenset({"system user", "event_scheduler", "unauthenticated user"})
_SYSTEM_COMMANDS = frozenset({"Daemon", "Binlog Dump", "Slave_IO", "Slave_SQL", "Slave_worker"})
LOCK_WAIT_TIMEOUT = 5


def parse_innodb_transactions(status: str) -> list[TrxInfo]:
    """The started transactions of SHOW ENGINE INNODB STATUS (MariaDB and MySQL).

    ``---TRANSACTION 2283, ACTIVE 3 sec`` (a read-only one shows its address instead of an
    id), then ``2 lock struct(s), heap size 1128, 1 row lock(s), undo log entries 1`` and
    ``MariaDB thread id 5, ...`` (``MySQL thread id`` on MySQL); ``not started`` is skipped.
    """
    section = status.split("LIST OF TRANSACTIONS FOR EACH SESSION:", 1)[-1]
    section = re.split(r"\n-{4,}\n", section, maxsplit=1)[0]
    found = []
    for block in section.split("---TRANSACTION ")[1:]:
        head = block.split("\n", 1)[0]
        active = _ACTIVE.search(head)
        thread = _THREAD.search(block)
        if active is None or thread is None:
            continue  # not started, or no session
        locks = _LOCKS.search(block)
        row_locks, undo = (int(locks.group(2)), int(locks.group(3) or 0)) if locks else (0, 0)
        trx_id = head.split(",", 1)[0].strip()
        seconds = int(active.group(1))
        found.append(
            TrxInfo(
                int(thread.group(1)),
                trx_id,
                f"{seconds} s ago",
                "RUNNING",
                row_locks,
                0,
                undo,
                active_seconds=seconds,
            )
        )
    return found


_ACTIVE = re.compile(r"ACTIVE (?:\(PREPARED\) )?(\d+) sec")
_THREAD = re.compile(r"(?:MySQL|MariaDB) thread id (\d+)")
_LOCKS = re.compile(
    r"(\d+) lock struct\(s\), heap size \d+, (\d+) row lock\(s\)(?:, undo log entries (\d+))?"
)
# MariaDB's plugin first: MariaDB has performance_schema.metadata_locks too, but with the
# performance schema off (its default) the table answers with no rows rather than an error.
# The plugin's table exists only where the plugin is loaded; MySQL has none.
_MDL_QUERIES = (
    "SELECT THREAD_ID, TABLE_SCHEMA, TABLE_NAME FROM information_schema.METADATA_LOCK_INFO "
    "WHERE TABLE_NAME <> '' AND THREAD_ID IN ({marks})",
    "SELECT t.PROCESSLIST_ID, m.OBJECT_SCHEMA, m.OBJECT_NAME "
    "FROM performance_schema.metadata_locks m "
    "JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID "
    "WHERE m.OBJECT_TYPE = 'TABLE' AND t.PROCESSLIST_ID IN ({marks})",
)


# Waiting on a lock: a metadata-lock state in the processlist, or an InnoDB row-lock wait.
_WAITING = """
SELECT p.ID, p.USER, p.TIME, p.STATE, p.INFO FROM information_schema.PROCESSLIST p
WHERE p.COMMAND = 'Query' AND p.TIME >= %s AND p.ID <> CONNECTION_ID()
  AND (p.STATE LIKE 'Waiting for%%lock%%' OR p.ID IN (
       SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX
       WHERE trx_state = 'LOCK WAIT'))
"""
# Idle inside a transaction for the bound too: a transaction between two of its
# statements (busy code under stress) is idle for milliseconds, a forgotten one for good.
_IDLE_IN_TRX = """
SELECT p.ID, p.USER, t.trx_started FROM information_schema.INNODB_TRX t
JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
WHERE p.COMMAND = 'Sleep' AND p.TIME >= %s
"""


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
            "user": self.user,
            "password": self.password,
            "database": database,
            "autocommit": True,
            "connect_timeout": max(0.5, timeout),
            "read_timeout": read_timeout,
            "write_timeout": 30,
            "charset": "utf8mb4",
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


def server_version(handshake: str) -> str:
    """'5.5.5-10.11.19-MariaDB-...' -> '10.11.19-MariaDB-...': MariaDB before 11 puts a
    '5.5.5-' in front of its version in the handshake for old clients' sake."""
    return handshake.removeprefix("5.5.5-")


class Monitor:
    """An administrative connection used for snapshots and for our own DDL."""

    def __init__(self, endpoint: Endpoint, where: str, own_ids: set[int] | None = None) -> None:
        self.endpoint = endpoint
        self.where = where  # "host:port" for messages; never includes a password
        self._lock = threading.Lock()
        self._conn: Any = endpoint.connect()  # None after a drop, until the next query
        self.connection_id: int = self._conn.thread_id()
        # The plugin's own connections (this one, the lock watch's): never the session's.
        # Shared between the monitors of one server, so a reconnect of either is known.
        self.own_ids: set[int] = own_ids if own_ids is not None else set()
        self.own_ids.add(self.connection_id)
        self.version: str = server_version(self._conn.get_server_info())
        self._mdl_query: str | None = None  # None: not tried yet; "": none works here

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        import pymysql

        conn, self._conn = self._conn, None
        # Already gone means nothing is left to release.
        if conn is not None:
            with contextlib.suppress(pymysql.err.Error, OSError):
                conn.close()

    def _reconnect(self) -> None:
        import pymysql

        sock = self.endpoint.unix_socket
        if sock is not None and not os.path.exists(sock):
            # The server removed its socket: it is gone. (PyMySQL would also leave the
            # socket object of a failed Unix-socket connect unclosed.)
            raise ServerGoneError(f"the MySQL server at {self.where} stopped answering")
        try:
            self._conn = self.endpoint.connect()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
            raise ServerGoneError(
                f"the MySQL server at {self.where} stopped answering ({_reason(exc)})"
            ) from None
        self.own_ids.discard(self.connection_id)
        self.connection_id = self._conn.thread_id()
        self.own_ids.add(self.connection_id)

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run `sql` on the admin connection.

        A broken admin connection is not a gone server: a Ctrl-C that lands mid-read
        leaves the protocol out of step, and a network blip closes the socket. The
        connection is dropped then and opened again once; only a server that refuses
        the new connection is gone.
        """
        import pymysql

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._reconnect()
                    with self._conn.cursor() as cursor:
                        cursor.execute(sql, args)
                        return list(cursor.fetchall())
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                    if not _is_disconnect(exc):
                        raise
                    self._drop()
                    if attempt == 2:
                        raise ServerGoneError(
                            f"the MySQL server at {self.where} stopped answering ({_reason(exc)})"
                        ) from None
                except BaseException:
                    self._drop()  # interrupted mid-statement: never reuse this connection
                    raise
            raise AssertionError("unreachable")

    def snapshot(self) -> ServerSnapshot:
        """Every client connection but ours: one round trip (SHOW PROCESSLIST)."""
        rows: dict[int, ProcessRow] = {}
        for row in self.query("SHOW PROCESSLIST"):
            ident, user, host, db, command, seconds, state, info = row[:8]
            if ident in self.own_ids or user in _SYSTEM_USERS:
                continue
            if command in _SYSTEM_COMMANDS:
                continue
            rows[int(ident)] = ProcessRow(
                int(ident),
                user,
                host or "",
                db,
                command,
                int(seconds or 0),
                state or None,
                _shorten(info),
            )
        # Threads_connected counts our own connections too.
        return ServerSnapshot(rows, len(rows) + len(self.own_ids))

    # -- the lock watch and containment -----------------------------------------------
    def waiting_statements(self, bound: float) -> list[Waiting]:
        """Statements that have waited on a lock (metadata or row) for `bound` seconds."""
        return [
            Waiting(int(ident), str(user), float(seconds), str(state or ""), _shorten(info))
            for ident, user, seconds, state, info in self.query(_WAITING, (int(bound),))
        ]

    def idle_in_transaction(self, bound: float) -> list[Holder]:
        """Connections idle for `bound` seconds inside an open transaction."""
        return [
            Holder(int(ident), str(user), str(started))
            for ident, user, started in self.query(_IDLE_IN_TRX, (int(bound),))
        ]

    def end_statement(self, ident: int) -> None:
        self.query(f"KILL QUERY {int(ident)}")

    def end_connection(self, ident: int) -> None:
        self.query(f"KILL CONNECTION {int(ident)}")

    def transactions(self, ids: set[int]) -> dict[int, TrxInfo]:
        """The open InnoDB transaction of each connection in `ids`, as of now.

        The list comes from SHOW ENGINE INNODB STATUS, which the server writes at the
        moment it is asked. information_schema.INNODB_TRX adds when each began and how
        many tables it locks, where it has caught up: it is a cache the server refreshes
        only after 0.1 s without readers, which any client of a shared server can delay.
        """
        if not ids:
            return {}
        rows = self.query("SHOW ENGINE INNODB STATUS")
        found = (
            {
                t.thread_id: t
                for t in parse_innodb_transactions(str(rows[0][2]))
                if t.thread_id in ids
            }
            if rows
            else {}
        )
        if not found:
            return {}
        marks = ", ".join(["%s"] * len(found))
        cached = {
            int(r[0]): r
            for r in self.query(
                "SELECT trx_mysql_thread_id, trx_started, trx_tables_locked, trx_rows_modified "
                f"FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id IN ({marks})",
                tuple(sorted(found)),
            )
        }
        tables = self._locked_tables(set(found))
        now: datetime.datetime | None = None
        for ident, trx in found.items():
            row = cached.get(ident)
            if row is not None:
                started = str(row[1])
            else:  # the cache has not caught up: the server's clock less ACTIVE seconds
                now = now or self.query("SELECT NOW()")[0][0]
                started = str(now - datetime.timedelta(seconds=trx.active_seconds))
            found[ident] = dataclasses.replace(
                trx,
                started=started,
                tables_locked=int(row[2] or 0) if row else trx.tables_locked,
                # The status counts undo entries as of now; the cache may be older.
                rows_modified=max(int(row[3] or 0), trx.rows_modified)
                if row
                else trx.rows_modified,
                tables=tuple(tables.get(ident, ())),
            )
        return found

    def _locked_tables(self, ids: set[int]) -> dict[int, list[str]]:
        """Tables each connection holds metadata locks on, where the server tells: MySQL's
        performance_schema.metadata_locks, MariaDB's METADATA_LOCK_INFO plugin."""
        if not ids or self._mdl_query == "":
            return {}
        import pymysql

        marks = ", ".join(["%s"] * len(ids))
        for sql in [self._mdl_query] if self._mdl_query else _MDL_QUERIES:
            try:
                rows = self.query(sql.format(marks=marks), tuple(sorted(ids)))
            except pymysql.err.Error:
                continue
            self._mdl_query = sql
            tables: dict[int, list[str]] = {}
            for ident, schema, name in rows:
                entry = f"{schema}.{name}"
                if entry not in tables.setdefault(int(ident), []):
                    tables[int(ident)].append(entry)
            return tables
        self._mdl_query = ""  # neither exists here: do not ask again
        return {}

    # -- provisioning ----------------------------------------------------------
    def create_database(self, database: str, user: str, password: str, host: str) -> None:
        self.query(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        self.query(f"CREATE USER '{user}'@'{_escape(host)}' IDENTIFIED BY %s", (password,))
        self.query(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'{host}'")

    def grant_named_after(self, database: str, user: str, host: str) -> None:
        """Let the session's user create and drop databases named ``<database>_*`` (a
        framework's test databases): rights on that name pattern, nothing more."""
        self.query(f"GRANT ALL PRIVILEGES ON `{_prefix_pattern(database)}`.* TO '{user}'@'{host}'")

    def drop_named_after(self, database: str) -> list[str]:
        """Drop the databases named ``<database>_*``: what grant_named_after allowed."""
        names = [
            r[0]
            for r in self.query(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
                (_prefix_pattern(database),),
            )
        ]
        for name in names:
            self.query(f"DROP DATABASE IF EXISTS `{name}`")
        return names

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

        A live session holds its lock, and takes it before creating anything, so nothing
        of a running session is touched. Only what has a session's exact shape goes: a
        database named as ours (a session creates it first and drops it last, so a killed
        one always leaves it), and its same-named user only when that user holds nothing
        but its own database - never a look-alike administrator someone else made.
        """
        import pymysql

        names = {
            r[0]
            for r in self.query(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
                ("dbleak\\_%",),
            )
            if _SESSION_NAME.match(r[0])
        }
        users: dict[str, list[str]] = {}
        try:
            for user, host in self.query(
                "SELECT User, Host FROM mysql.user WHERE User LIKE %s", ("dbleak\\_%",)
            ):
                users.setdefault(user, []).append(host)
        except pymysql.err.Error as exc:  # no SELECT on mysql.user: databases only
            log.info("dbleak: cannot list users for the sweep: %s", exc)
        swept = []
        for name in sorted(names):
            if self.query("SELECT IS_FREE_LOCK(%s)", (_lock_name(name),))[0][0] != 1:
                continue
            hosts = users.get(name, [])
            if not all(self._holds_only_its_database(name, host) for host in hosts):
                continue
            self.kill_connections_of(name)
            self.drop_named_after(name)  # before its own: a killed run always leaves that
            for host in hosts:
                self.query(f"DROP USER IF EXISTS '{name}'@'{host}'")  # no args: no %-format
            self.query(f"DROP DATABASE IF EXISTS `{name}`")
            swept.append(name)
        return swept

    def _holds_only_its_database(self, user: str, host: str) -> bool:
        """The user's grants are what create_database gives a session user, nothing more."""
        allowed = {
            "USAGE ON *.*",
            f"ALL PRIVILEGES ON `{user}`.*",
            f"ALL PRIVILEGES ON `{_prefix_pattern(user)}`.*",  # grant_named_after
        }
        for (line,) in self.query(f"SHOW GRANTS FOR '{user}'@'{host}'"):
            what = str(line).removeprefix("GRANT ").split(" TO ", 1)[0]
            if what not in allowed:
                return False
        return True

    def drop_database(self, database: str, user: str, host: str) -> None:
        self.kill_connections_of(user)
        self.drop_named_after(database)
        self.query(f"DROP USER IF EXISTS '{user}'@'{host}'")
        self.query(f"DROP DATABASE IF EXISTS `{database}`")

    def kill_connections_of(self, user: str) -> int:
        import pymysql

        killed = 0
        for row in self.query("SHOW PROCESSLIST"):
            if row[1] == user and row[0] not in self.own_ids:
                try:
                    self.query(f"KILL CONNECTION {int(row[0])}")
                    killed += 1
                except pymysql.err.OperationalError:
                    pass  # it ended on its own meanwhile
        return killed


# The names ensure_database gives a session's database and user: dbleak_<worker>_<hex6>.
_SESSION_NAME = re.compile(r"^dbleak_[A-Za-z0-9]{1,8}_[0-9a-f]{6}$")


def _prefix_pattern(database: str) -> str:
    """``<database>_%`` as a grant or LIKE pattern: the name's own ``_`` and ``%`` literal."""
    return database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%"


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


def _reason(exc: BaseException) -> str:
    # pymysql raises InterfaceError(0, "") for a connection it already closed.
    text = str(exc.args[1]).strip() if len(exc.args) >= 2 else ""
    return text.splitlines()[0] if text else "connection closed"
