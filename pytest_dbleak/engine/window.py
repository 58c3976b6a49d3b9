"""The state at the start of a leak check's window. No pytest import."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pytest_dbleak.families.base import ServerSnapshot


@dataclass
class Window:
    """The state at the start of a test or block."""

    seq: int
    server: ServerSnapshot
    trx_before: set[int]
    checked_out: int
    started: float = field(default_factory=time.monotonic)
    # Threads running when the window opened: one started inside it and still running
    # may be about to give back a connection it was handed.
    threads: frozenset[int] = field(
        default_factory=lambda: frozenset(t.ident or 0 for t in threading.enumerate())
    )
    # Open transactions (thread id -> trx id) of idle connections no pool holds (BeyondPools)
    server_trx: dict[int, str] | None = None
