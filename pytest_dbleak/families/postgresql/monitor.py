"""The plugin's own connection to a PostgreSQL server: snapshots, lock waits, provisioning.

No pytest import. One psycopg connection in autocommit (``pg_stat_activity`` read inside
a transaction is a snapshot frozen at its first statement), with a short
``lock_timeout`` so that the plugin's own DDL never hangs behind a lock a leak holds.

Only client backends count (``backend_type = 'client backend'``): autovacuum workers,
parallel workers and the WAL writer come and go on their own. ``state`` tells what a
backend does (``idle in transaction`` is PostgreSQL's name for a forgotten
transaction), ``xact_start`` when its transaction began (NULL once it is
``idle in transaction (aborted)``), ``pg_blocking_pids()`` who blocks whom.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass
from typing import Any

from pytest_dbleak.engine.errors import DbleakError, ServerGoneError
from pytest_dbleak.families.mysql.monitor import ProcessRow, ServerSnapshot
from pytest_dbleak.families.postgresql.embedded import PgEndpoint

LOCK_TIMEOUT_MS = 5000

_ACTIVITY = """
SELECT pid, usename, COALESCE(host(client_addr) || ':' || client_port, 'local'), datname,
       COALESCE(state, ''),
       COALESCE(EXTRACT(EPOCH FROM now() - COALESCE(state_change, backend_start)), 0)::int,
       NULLIF(concat_ws(':', wait_event_type, wait_event), ''), left(query, 200),
       xact_start::text
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
# A statement waiting for a lock, and the backends that hold it (pg_blocking_pids).
_LOCK_WAITS = """
SELECT pid, usename, EXTRACT(EPOCH FROM now() - query_start)::float, wait_event,
       left(query, 200), pg_blocking_pids(pid)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND wait_event_type = 'Lock'
  AND now() - query_start >= make_interval(secs => %s) AND pid <> pg_backend_pid()
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

    def __init__(self, endpoint: PgEndpoint, where: str) -> None:
        self.endpoint = endpoint
        self.where = where  # "host:port" for messages; never a password
        self._lock = threading.Lock()
        self._conn: Any = endpoint.connect()
        self._conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        self.connection_id: int = int(self._conn.info.backend_pid)
        self.own_ids: set[int] = {self.connection_id}
        self.version: str = str(self.query("SHOW server_version")[0][0])

    def close(self) -> None:
        import psycopg

        # Already gone means nothing is left to release.
        with self._lock, contextlib.suppress(psycopg.Error):
            self._conn.close()

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            try:
                cursor = self._conn.execute(sql, args)
                return list(cursor.fetchall()) if cursor.description else []
            except psycopg.OperationalError as exc:
                if self._conn.closed or self._conn.broken:
                    raise ServerGoneError(
                        f"the PostgreSQL server at {self.where} stopped answering "
                        f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})"
                    ) from None
                raise

    # -- what a check reads ---------------------------------------------------------
    def snapshot(self) -> ServerSnapshot:
        """Every client backend but ours: one round trip."""
        rows: dict[int, ProcessRow] = {}
        for pid, user, host, db, state, seconds, waiting, query, xact in self.query(_ACTIVITY):
            if pid in self.own_ids:
                continue
            rows[int(pid)] = ProcessRow(
                int(pid),
                user or "",
                host,
                db,
                state,
                int(seconds),
                waiting,
                query,
                trx_started=xact,
            )
        # numbackends counts the plugin's own connections too, as Threads_connected does.
        return ServerSnapshot(rows, len(rows) + len(self.own_ids))

    def idle_in_transaction(self, ids: set[int]) -> dict[int, str | None]:
        """Backends of `ids` idle inside a transaction, with when it began (None once it
        is aborted: PostgreSQL clears xact_start then)."""
        if not ids:
            return {}
        rows = self.query(
            "SELECT pid, xact_start::text FROM pg_stat_activity "
            "WHERE pid = ANY(%s) AND state LIKE 'idle in transaction%%'",
            (sorted(ids),),
        )
        return {int(pid): started for pid, started in rows}

    def lock_waits(self, bound: float) -> list[LockWait]:
        """Statements that have waited on a lock for at least `bound` seconds."""
        return [
            LockWait(int(pid), user or "", float(secs), str(event or ""), str(q or ""), tuple(b))
            for pid, user, secs, event, q, b in self.query(_LOCK_WAITS, (bound,))
        ]

    def cancel(self, pid: int) -> bool:
        """Interrupt `pid`'s statement (MySQL's KILL QUERY)."""
        return bool(self.query("SELECT pg_cancel_backend(%s)", (pid,))[0][0])

    def terminate(self, pid: int) -> bool:
        """End `pid`'s connection (MySQL's KILL CONNECTION)."""
        return bool(self.query("SELECT pg_terminate_backend(%s)", (pid,))[0][0])

    # -- provisioning -----------------------------------------------------------------
    def claim(self, name: str) -> None:
        """Hold an advisory lock named after the session while this connection lives: the
        server releases it when the connection dies, however the run ended."""
        if not self.query("SELECT pg_try_advisory_lock(hashtext(%s))", (_lock_name(name),))[0][0]:
            raise DbleakError(f"the session lock of {name} is held by another connection")

    def create_database(self, name: str, password: str) -> None:
        """A role and a database it owns, both named `name`."""
        from psycopg import sql

        with self._lock:
            self._conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            self._conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                )
            )

    def drop_database(self, name: str) -> None:
        """Drop the session's database (its connections with it) and its role."""
        from psycopg import sql

        with self._lock:
            self._conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            self._conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def sweep_orphans(self, keep: str | None = None) -> list[str]:
        """Drop the databases and roles of dbleak sessions whose lock is free (killed runs).

        A live session takes its lock before creating anything, so nothing of a running
        session is touched; only names of a session's exact shape are considered.
        """
        names = {
            str(r[0])
            for r in self.query("SELECT datname FROM pg_database WHERE datname LIKE 'dbleak\\_%%'")
        } | {
            str(r[0])
            for r in self.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'dbleak\\_%%'")
        }
        swept = []
        for name in sorted(n for n in names if _SESSION_NAME.match(n) and n != keep):
            key = _lock_name(name)
            if not self.query("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))[0][0]:
                continue  # a live session holds it
            try:
                self.drop_database(name)
                swept.append(name)
            finally:
                self.query("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        return swept


def _lock_name(name: str) -> str:
    return f"pytest-dbleak:{name}"
