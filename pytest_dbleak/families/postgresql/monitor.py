"""The plugin's own connection to a PostgreSQL server: the seam's ``ServerMonitor``.

No pytest import. One psycopg connection in autocommit (``pg_stat_activity`` read inside
a transaction is a snapshot frozen at its first statement), with a short
``lock_timeout`` so that the plugin's own DDL never hangs behind a lock a leak holds.

Only client backends count (``backend_type = 'client backend'``): autovacuum workers,
parallel workers and the WAL writer come and go on their own. ``state`` tells what a
backend does (``idle in transaction`` is PostgreSQL's name for a forgotten
transaction), ``xact_start`` when its transaction began (NULL once it is
``idle in transaction (aborted)``), ``pg_blocking_pids()`` who blocks whom.

The seam speaks the processlist's words: a row's ``command`` is ``Sleep`` for an idle
backend (in a transaction or not) and ``Query`` for one running a statement, as the
engine reads them; PostgreSQL's own ``state`` is the row's ``state``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from pytest_dbleak.engine.errors import DbleakError, ServerGoneError
from pytest_dbleak.families.base import (
    Holder,
    ProcessRow,
    ServerMonitor,
    ServerSnapshot,
    TrxInfo,
    Waiting,
)
from pytest_dbleak.families.postgresql.embedded import PgEndpoint

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 5.0  # seconds our own statements may wait on a lock

_ACTIVITY = """
SELECT pid, usename, COALESCE(host(client_addr) || ':' || client_port, 'local'), datname,
       COALESCE(state, ''),
       COALESCE(EXTRACT(EPOCH FROM now() - COALESCE(state_change, backend_start)), 0)::int,
       wait_event_type, wait_event, left(query, 200), xact_start::text
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
# A statement waiting for a lock, and the backends that hold it (pg_blocking_pids).
# PostgreSQL does not say since when a statement waits: it waits at most since it began.
_LOCK_WAITS = """
SELECT pid, usename, EXTRACT(EPOCH FROM now() - query_start)::float, wait_event,
       left(query, 200), pg_blocking_pids(pid)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND wait_event_type = 'Lock'
  AND now() - query_start >= make_interval(secs => %s) AND pid <> pg_backend_pid()
"""
# Idle inside a transaction for the bound too: a transaction between two of its
# statements (busy code under stress) is idle for milliseconds, a forgotten one for good.
# An aborted one has no xact_start: it is known to be open since it went idle.
_IDLE_IN_TRX = """
SELECT pid, usename, COALESCE(xact_start, state_change)::text
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state LIKE 'idle in transaction%%'
  AND now() - state_change >= make_interval(secs => %s) AND pid <> pg_backend_pid()
"""
# The open transaction of each backend, and how many tables of its database it locks.
# Row locks live in the rows themselves, not in pg_locks: a transaction that wrote has an
# xid (backend_xid), one that only read has none. The identity of a transaction is when
# it began (an aborted one: when it went idle), which a new one on the same backend
# never shares.
_TRANSACTIONS = """
SELECT a.pid, COALESCE(a.xact_start, a.state_change)::text, a.state,
       COALESCE(EXTRACT(EPOCH FROM now() - COALESCE(a.xact_start, a.state_change)), 0)::int,
       a.backend_xid IS NOT NULL,
       (SELECT count(DISTINCT l.relation) FROM pg_locks l
        WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted
          AND l.database = a.datid),
       ARRAY(SELECT DISTINCT l.relation::int8 FROM pg_locks l
             WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted
               AND l.database = a.datid),
       a.datname
FROM pg_stat_activity a
WHERE a.pid = ANY(%s) AND a.backend_type = 'client backend'
  AND (a.xact_start IS NOT NULL OR a.state = 'idle in transaction (aborted)')
"""
# The tables among locked relations (not their indexes, sequences or the catalog); read
# in the relations' own database: pg_class is per database.
_TABLES = """
SELECT c.oid::int8, n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%s::oid[]) AND c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
# The names a session gives its database and role: dbleak_<worker>_<hex6>.
_SESSION_NAME = re.compile(r"^dbleak_[A-Za-z0-9]{1,8}_[0-9a-f]{6}$")


@dataclass(frozen=True)
class LockWait:
    """A statement waiting on a lock, and the backends whose locks it waits for."""

    pid: int
    user: str
    seconds: float
    wait_event: str
    statement: str
    blockers: tuple[int, ...]


class PgMonitor:
    """An administrative connection used for snapshots and for the plugin's own DDL."""

    def __init__(self, endpoint: PgEndpoint, where: str, own_ids: set[int] | None = None) -> None:
        self.endpoint = endpoint
        self.where = where  # "host:port" for messages; never a password
        self._lock = threading.Lock()
        self._claimed: list[str] = []  # session locks this connection holds
        self._conn: Any = self._connect()  # None after a drop, until the next query
        self.connection_id: int = int(self._conn.info.backend_pid)
        # The plugin's own connections (this one, the lock watch's): never the session's.
        # Shared between the monitors of one server, so a reconnect of either is known.
        self.own_ids: set[int] = own_ids if own_ids is not None else set()
        self.own_ids.add(self.connection_id)
        self.version: str = str(self.query("SHOW server_version")[0][0])

    def _connect(self) -> Any:
        return self.endpoint.connect(lock_timeout=LOCK_TIMEOUT)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        # Already gone means nothing is left to release.
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()

    def _reconnect(self) -> None:
        import psycopg

        try:
            self._conn = self._connect()
        except (psycopg.OperationalError, OSError) as exc:
            raise ServerGoneError(
                f"the PostgreSQL server at {self.where} stopped answering ({_reason(exc)})"
            ) from None
        self.own_ids.discard(self.connection_id)
        self.connection_id = int(self._conn.info.backend_pid)
        self.own_ids.add(self.connection_id)
        # The session locks went with the old connection: take them again, so that no
        # other session's sweep takes this one's database for a killed run's.
        for name in self._claimed:
            self._conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_lock_name(name),))

    def query(self, sql: Any, args: Any = None) -> list[tuple[Any, ...]]:
        """Run `sql` on the admin connection.

        A broken admin connection is not a gone server: a Ctrl-C that lands mid-read
        leaves the protocol out of step, and a network blip closes the socket. The
        connection is dropped then and opened again once; only a server that refuses
        the new connection is gone. An error the server reported leaves the connection
        usable (autocommit: no transaction is left aborted).
        """
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._reconnect()
                    cursor = self._conn.execute(sql, args)
                    return list(cursor.fetchall()) if cursor.description else []
                except psycopg.Error as exc:
                    conn = self._conn
                    if conn is not None and not (conn.closed or conn.broken):
                        raise  # the server answered: a refusal, a timeout, a bad statement
                    self._drop()
                    if attempt == 2:
                        raise ServerGoneError(
                            f"the PostgreSQL server at {self.where} stopped answering "
                            f"({_reason(exc)})"
                        ) from None
                except BaseException:
                    self._drop()  # interrupted mid-statement: never reuse this connection
                    raise
            raise AssertionError("unreachable")

    # -- what a check reads ---------------------------------------------------------
    def snapshot(self) -> ServerSnapshot:
        """Every client backend but ours: one round trip."""
        rows: dict[int, ProcessRow] = {}
        for row in self.query(_ACTIVITY):
            pid, user, host, db, state, seconds, wait_type, wait_event, query, xact = row
            if pid in self.own_ids:
                continue
            waiting = f"waiting for a {wait_event} lock" if wait_type == "Lock" else None
            rows[int(pid)] = ProcessRow(
                int(pid),
                user or "",
                host,
                db,
                _command(state),
                int(seconds),
                waiting or state or None,
                query,
                trx_started=xact,
            )
        # numbackends counts the plugin's own connections too, as Threads_connected does.
        return ServerSnapshot(rows, len(rows) + len(self.own_ids), "numbackends")

    def transactions(self, ids: set[int]) -> dict[int, TrxInfo]:
        """The open transaction of each backend in `ids`, as of now."""
        if not ids:
            return {}
        found = {}
        rows = self.query(_TRANSACTIONS, (sorted(ids),))
        names = self._table_names({(db, oid) for *_, oids, db in rows for oid in oids or ()})
        for pid, began, state, seconds, wrote, count, oids, db in rows:
            tables = sorted({names[(db, oid)] for oid in oids or () if (db, oid) in names})
            found[int(pid)] = TrxInfo(
                int(pid),
                str(began),
                str(began),
                str(state or ""),
                0,
                int(count or 0),
                1 if wrote else 0,  # PostgreSQL does not count rows: it wrote, or not
                tables=tuple(tables),
                active_seconds=int(seconds or 0),
                lock_kind="locks",
            )
        return found

    def _table_names(self, relations: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """(database, relation oid) -> ``schema.table``, for the tables among them.

        Only when a leak is described: a short admin connection to each database, whose
        backend counts as the plugin's own. Best effort: a refusal names no table.
        """
        import psycopg

        found: dict[tuple[str, int], str] = {}
        for db in sorted({db for db, _ in relations}):
            oids = sorted(oid for d, oid in relations if d == db)
            try:
                with self.endpoint.connect(dbname=db, timeout=2, read_timeout=2) as conn:
                    self.own_ids.add(int(conn.info.backend_pid))
                    for oid, name in conn.execute(_TABLES, (oids,)).fetchall():
                        found[(db, int(oid))] = str(name)
            except psycopg.Error as exc:
                log.debug("dbleak: cannot name the tables locked in %s: %s", db, exc)
        return found

    def waiting_statements(self, bound: float) -> list[Waiting]:
        """Statements that have waited on a lock for `bound` seconds."""
        return [
            Waiting(w.pid, w.user, w.seconds, f"waiting for a {w.wait_event} lock", w.statement)
            for w in self.lock_waits(bound)
        ]

    def lock_waits(self, bound: float) -> list[LockWait]:
        """Statements that have waited on a lock for `bound` seconds, with their blockers."""
        return [
            LockWait(int(pid), user or "", float(secs), str(event or ""), str(q or ""), tuple(b))
            for pid, user, secs, event, q, b in self.query(_LOCK_WAITS, (bound,))
            if pid not in self.own_ids
        ]

    def idle_in_transaction(self, bound: float) -> list[Holder]:
        """Backends idle for `bound` seconds inside an open transaction."""
        return [
            Holder(int(pid), str(user or ""), str(started))
            for pid, user, started in self.query(_IDLE_IN_TRX, (bound,))
            if pid not in self.own_ids
        ]

    # -- what containment and the lock watch do -----------------------------------------
    def end_statement(self, ident: int) -> None:
        """Interrupt the backend's statement (MySQL's KILL QUERY)."""
        self.query("SELECT pg_cancel_backend(%s)", (int(ident),))

    def end_connection(self, ident: int) -> None:
        """End the backend (MySQL's KILL CONNECTION)."""
        self.query("SELECT pg_terminate_backend(%s)", (int(ident),))

    # -- provisioning -----------------------------------------------------------------
    def claim(self, name: str) -> None:
        """Hold an advisory lock named after the session while this connection lives: the
        server releases it when the connection dies, however the run ended."""
        if not self.query("SELECT pg_try_advisory_lock(hashtext(%s))", (_lock_name(name),))[0][0]:
            raise DbleakError(f"the session lock of {name} is held by another connection")
        self._claimed.append(name)

    def create_database(self, database: str, user: str, password: str, host: str) -> None:
        """A role `user` and a database `database` it owns (`host`: MySQL's user host,
        which PostgreSQL has no use for)."""
        from psycopg import sql

        self.query(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
        self.query(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )

    def grant_named_after(self, database: str, user: str, host: str) -> None:
        """Let the session's role create databases (a framework's test databases).

        PostgreSQL grants no rights on a name pattern: the role may create any database
        (CREATEDB); those named ``<database>_*`` go with the session's.
        """
        from psycopg import sql

        self.query(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(user)))

    def drop_named_after(self, database: str) -> list[str]:
        """Drop the databases named ``<database>_*`` (their connections with them)."""
        from psycopg import sql

        names = [
            str(r[0])
            for r in self.query(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (_prefix_pattern(database),),
            )
        ]
        for name in names:
            self.query(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        return names

    def drop_database(self, database: str, user: str, host: str) -> None:
        """Drop the session's databases (their connections with them), end what the role
        still has open elsewhere, and drop the role."""
        from psycopg import sql

        self.drop_named_after(database)
        self.query(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        self.kill_connections_of(user)
        self.query(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))

    def kill_connections_of(self, user: str) -> int:
        """End the backends of `user` and wait (up to 5 s each) until they are gone."""
        rows = self.query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE usename = %s AND pid <> ALL(%s)",
            (user, sorted(self.own_ids)),
        )
        return sum(1 for (ended,) in rows if ended)

    def sweep_orphans(self) -> list[str]:
        """Drop the databases and roles of dbleak sessions whose lock is free (killed runs).

        A live session takes its lock before creating anything, so nothing of a running
        session is touched (this connection's own sessions are skipped: an advisory lock
        is granted again to the session that holds it). Only names of a session's exact
        shape are considered, and a role only if it is no administrator.
        """
        names = {
            str(r[0])
            for r in self.query("SELECT datname FROM pg_database WHERE datname LIKE 'dbleak\\_%%'")
        } | {
            str(r[0])
            for r in self.query(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'dbleak\\_%%' "
                "AND NOT rolsuper AND NOT rolcreaterole"
            )
        }
        admins = {
            str(r[0])
            for r in self.query("SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole")
        }
        swept = []
        for name in sorted(names):
            if not _SESSION_NAME.match(name) or name in self._claimed or name in admins:
                continue
            key = _lock_name(name)
            if not self.query("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))[0][0]:
                continue  # a live session holds it
            try:
                self.drop_database(name, name, "")
                swept.append(name)
            finally:
                self.query("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        return swept


_check: type[ServerMonitor] = PgMonitor  # mypy: PgMonitor is the seam's ServerMonitor


def _command(state: str) -> str:
    """The processlist's Command for a backend's state: what the engine reads."""
    if state.startswith("idle"):
        return "Sleep"  # idle, idle in transaction, idle in transaction (aborted)
    if state == "active":
        return "Query"
    return state or "Sleep"  # fastpath function call, disabled (track_activities off)


def _prefix_pattern(database: str) -> str:
    """``<database>_%`` as a LIKE pattern: the name's own ``_`` and ``%`` literal."""
    return database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%"


def _lock_name(name: str) -> str:
    return f"pytest-dbleak:{name}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else "connection closed"
