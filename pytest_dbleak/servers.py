"""What a backend hands over: a running server, its facts, a server on its way up.

No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .probe import Endpoint


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
