"""The server side of the in-process tracker and detector tests: a processlist the test
sets (issue 19 allows a fake server snapshot: no server is started for these tests).

The tracker, the detector and the SQLAlchemy pools (SQLite files) stay real; only the
server's processlist is a test double, so that a row can appear without a server.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pytest_dbleak.families.base import Holder, ProcessRow, ServerSnapshot, TrxInfo, Waiting

ROOT = Path(__file__).resolve().parents[2]
APP_USER = "app"  # the session's database user: the detector judges its rows only


class _NoEndpoint:
    """Not on this machine: the detector never reads the kernel's socket table for it."""

    host = "fake-server.invalid"
    port = 3306
    user = "root"
    password = ""
    unix_socket = None
    is_local = False

    def connect(self, *, timeout: float = 0, read_timeout: float = 0) -> object:
        raise AssertionError("the detector must not connect through the endpoint")


class SnapshotServer:
    """A ``ServerMonitor`` whose processlist is what the test puts in it.

    What a leak check reads (``snapshot``, ``transactions``) answers from that; what
    containment does (``end_connection``) is recorded; the rest is not part of a check
    and fails loudly if a check ever calls it.
    """

    where = "fake-server.invalid:3306"
    version = "snapshot double"

    def __init__(self) -> None:
        self.endpoint = _NoEndpoint()
        self.own_ids: set[int] = set()
        self.rows: dict[int, ProcessRow] = {}
        self.trx: dict[int, str] = {}  # connection -> id of the transaction it has open
        self._settling: dict[int, int] = {}  # connection -> looks before it shows Sleep
        self.ended: list[int] = []

    def connect(self, ident: int, user: str = APP_USER) -> None:
        """A client connection appears in the processlist (idle, like a pooled one)."""
        self.rows[ident] = ProcessRow(
            ident, user, f"10.0.0.9:{40000 + ident}", "db", "Sleep", 0, None
        )

    def disconnect(self, ident: int) -> None:
        del self.rows[ident]

    # -- what a check reads --------------------------------------------------------------
    def snapshot(self) -> ServerSnapshot:
        taken = ServerSnapshot(dict(self.rows), len(self.rows))
        for ident, looks in list(self._settling.items()):
            if looks <= 1:
                del self._settling[ident]
                self.set_command(ident, "Sleep")
            else:
                self._settling[ident] = looks - 1
        return taken

    def set_command(self, ident: int, command: str) -> None:
        """The connection's processlist Command (``Query`` while it runs a statement)."""
        self.rows[ident] = dataclasses.replace(self.rows[ident], command=command)

    def busy_for(self, ident: int, looks: int) -> None:
        """The connection shows ``Query`` for the next `looks` snapshots, then ``Sleep``
        (a statement whose reply the client has read, the server still finishing it)."""
        self.set_command(ident, "Query")
        self._settling[ident] = looks

    def transactions(self, ids: set[int]) -> dict[int, TrxInfo]:
        return {
            ident: TrxInfo(ident, trx_id, "2026-12-06 07:00:00", "ACTIVE", 0, 0, 0)
            for ident, trx_id in self.trx.items()
            if ident in ids
        }

    def waiting_statements(self, bound: float) -> list[Waiting]:
        return []

    def idle_in_transaction(self, bound: float) -> list[Holder]:
        return []

    # -- containment ---------------------------------------------------------------------
    def end_statement(self, ident: int) -> None:
        raise AssertionError(f"a leak check ended statement {ident}")

    def end_connection(self, ident: int) -> None:
        self.ended.append(ident)
        self.rows.pop(ident, None)

    # -- not part of a check -------------------------------------------------------------
    def close(self) -> None:
        pass

    def claim(self, name: str) -> None:
        raise AssertionError("not part of a leak check")

    def sweep_orphans(self) -> list[str]:
        raise AssertionError("not part of a leak check")

    def create_database(self, database: str, user: str, password: str, host: str) -> None:
        raise AssertionError("not part of a leak check")

    def drop_database(self, database: str, user: str, host: str) -> None:
        raise AssertionError("not part of a leak check")

    def grant_named_after(self, database: str, user: str, host: str) -> None:
        raise AssertionError("not part of a leak check")

    def drop_named_after(self, database: str) -> list[str]:
        raise AssertionError("not part of a leak check")


def next_line() -> int:
    """The line after the caller's: where the statement under test is."""
    return sys._getframe(1).f_lineno + 1
