"""The seam between the engine and the server families.

A family (MySQL, PostgreSQL) implements ``Family``: how to start a server on each
backend, reach it as its administrator (a ``ServerMonitor``), and describe it. Above
this module nothing knows which family it talks to; the types here are what crosses.

No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pytest_dbleak.engine.database import Database
    from pytest_dbleak.engine.errors import DbleakError, Redactor
    from pytest_dbleak.engine.settings import Settings


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
            "id": self.id,
            "user": self.user,
            "host": self.host,
            "db": self.db,
            "command": self.command,
            "time": self.time,
            "state": self.state,
            "info": self.info,
            "trx_started": self.trx_started,
        }


@dataclass(frozen=True)
class ServerSnapshot:
    """The server's client connections at one instant (one processlist read)."""

    rows: dict[int, ProcessRow] = field(default_factory=dict)
    threads_connected: int = 0
    counter: str = "Threads_connected"  # what the server calls threads_connected

    def ids_of(self, users: frozenset[str] | None) -> set[int]:
        return {r.id for r in self.rows.values() if users is None or r.user in users}


@dataclass(frozen=True)
class TrxInfo:
    """An open InnoDB transaction of one connection (SHOW ENGINE INNODB STATUS, with
    information_schema.INNODB_TRX where it has caught up)."""

    thread_id: int
    trx_id: str
    started: str
    state: str
    rows_locked: int
    tables_locked: int
    rows_modified: int
    tables: tuple[str, ...] = ()  # the tables it holds locks on, where the server tells
    active_seconds: int = 0
    lock_kind: str = "metadata locks"  # what the server calls the locks on `tables`

    def describe(self) -> str:
        """`began 2026-12-01 20:31:02, 1 row lock, 1 table locked, 1 row modified`."""
        parts = [f"began {self.started}"]
        for count, one, many in (
            (self.rows_locked, "row lock", "row locks"),
            (self.tables_locked, "table locked", "tables locked"),
            (self.rows_modified, "row modified", "rows modified"),
        ):
            if count:
                parts.append(f"{count} {one if count == 1 else many}")
        if self.tables:
            parts.append(f"{self.lock_kind} on " + ", ".join(self.tables))
        return ", ".join(parts)


@dataclass(frozen=True)
class Waiting:
    """A statement of a client that has waited on a lock for a while."""

    id: int
    user: str
    seconds: float
    state: str
    info: str | None


@dataclass(frozen=True)
class Holder:
    """A client connection idle inside an open transaction."""

    id: int
    user: str
    started: str


class Endpoint(Protocol):
    """How to reach a server as its administrator."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def unix_socket(self) -> str | None: ...
    @property
    def is_local(self) -> bool: ...

    def connect(self, *, timeout: float = ..., read_timeout: float = ...) -> Any: ...


class ServerMonitor(Protocol):
    """The plugin's administrative connection to a server of one family.

    Connection ids are the server's own (MySQL's thread id, PostgreSQL's backend pid).
    """

    where: str
    version: str
    own_ids: set[int]  # the plugin's own connections: never the session's

    @property
    def endpoint(self) -> Endpoint:
        """The server it talks to (read only: a family's monitor has its own kind)."""
        ...

    def close(self) -> None: ...

    # what a check reads
    def snapshot(self) -> ServerSnapshot: ...
    def transactions(self, ids: set[int]) -> dict[int, TrxInfo]: ...
    def waiting_statements(self, bound: float) -> list[Waiting]: ...
    def idle_in_transaction(self, bound: float) -> list[Holder]: ...

    # what containment and the lock watch do
    def end_statement(self, ident: int) -> None: ...
    def end_connection(self, ident: int) -> None: ...

    # a session's database and user
    def claim(self, name: str) -> None: ...
    def sweep_orphans(self) -> list[str]: ...
    def create_database(self, database: str, user: str, password: str, host: str) -> None: ...
    def drop_database(self, database: str, user: str, host: str) -> None: ...
    def grant_named_after(self, database: str, user: str, host: str) -> None: ...
    def drop_named_after(self, database: str) -> list[str]: ...


class Family(Protocol):
    """One kind of server: everything the engine and the pytest layer may ask of it."""

    name: str  # "mysql"
    title: str  # "MySQL", for messages
    counter: str  # the server's count of client connections, as reports name it
    admin_driver: str  # the module the plugin's own connections use ("pymysql")

    def launch(self, settings: Settings, redactor: Redactor) -> Launch:
        """Set off the server the settings ask for; DbleakError says why it cannot be."""
        ...

    def endpoint(self, fields: dict[str, Any]) -> Endpoint:
        """An endpoint from ``endpoint_fields`` (an xdist worker gets the controller's)."""
        ...

    def endpoint_fields(self, endpoint: Endpoint) -> dict[str, Any]: ...

    def monitor(self, running: RunningServer, own_ids: set[int] | None = None) -> ServerMonitor:
        """The administrative connection; DbleakError in one line when it cannot be had."""
        ...

    def describe(self, running: RunningServer, version: str) -> ServerInfo: ...

    def database(
        self, name: str, user: str, password: str, host: str, port: int, *, local: bool
    ) -> Database: ...

    def connect_error(self, running: RunningServer, exc: Exception) -> DbleakError: ...


@dataclass(frozen=True)
class ServerInfo:
    """Facts about the session's server (the ``dbleak_server`` fixture)."""

    backend: str
    host: str
    port: int
    socket: str | None
    version: str
    admin_url: str = field(repr=False)

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in self.version.lower()

    def __repr__(self) -> str:  # the admin URL holds a password: never print it
        return (
            f"ServerInfo(backend={self.backend!r}, host={self.host!r}, port={self.port}, "
            f"socket={self.socket!r}, version={self.version!r})"
        )


@dataclass
class RunningServer:
    """A server the session can use; ``stop`` releases what the backend started."""

    backend: str
    endpoint: Endpoint
    owned: bool  # the plugin started it: every client connection on it is ours
    stop: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)  # one-line remarks for the terminal

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"


class Launch:
    """A server on its way up: ``wait()`` returns it running, ``cancel()`` gives it up.

    Launching mariadbd and waiting for its login are split so that the caller can do
    other work (importing SQLAlchemy) while the server boots.
    """

    def __init__(
        self, wait: Callable[[], RunningServer], cancel: Callable[[], None] = lambda: None
    ) -> None:
        self._wait = wait
        self._cancel = cancel

    def wait(self) -> RunningServer:
        return self._wait()

    def cancel(self) -> None:
        self._cancel()
