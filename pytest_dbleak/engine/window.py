"""The state at the start of a leak check's window. No pytest import."""

from __future__ import annotations

import gc
import sys
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
    # How many collections of the two older generations had run: while neither has run
    # since, everything the window made is still young (see ``made_only_young``).
    collections_at_start: tuple[int, int] = field(default_factory=lambda: old_collections())

    def made_only_young(self) -> bool:
        """Whether all the window made is in the young generations: no collection of
        generation 1 or 2 has run since it opened (only those move objects into the
        oldest generation), so collecting generation 1 reaches all of it. Checked on
        CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0; 3.14's incremental collector moves a
        young collection's survivors straight to its old generation, so from 3.14 on it
        is never assumed (a full collection runs, as before)."""
        return GENERATIONAL_GC and old_collections() == self.collections_at_start


GENERATIONAL_GC = sys.implementation.name == "cpython" and sys.version_info < (3, 14)


def old_collections() -> tuple[int, int]:
    """The number of collections of generations 1 and 2 so far (``gc.get_stats``: ~1 µs)."""
    if not GENERATIONAL_GC:
        return (0, 0)
    stats = gc.get_stats()
    return stats[1]["collections"], stats[2]["collections"]
