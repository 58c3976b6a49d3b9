"""Which test started which thread, so that what a thread opens after its test ended is
blamed on that test. No pytest import.

The one internal used: ``threading.Thread.start``, wrapped while the tracker is
installed (checked on CPython 3.10 - 3.13; ``threading.Timer`` and every subclass that
calls ``super().start()`` go through it). A thread started any other way (``_thread``)
is simply not recorded: its leaks fall on the test running when they appear, as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHECKED_ON = "CPython 3.10 - 3.13"


@dataclass(frozen=True)
class Started:
    seq: int  # tracker sequence number when start() was called
    owned: bool  # started while a wider-scoped fixture was being set up


class ThreadStarts:
    def __init__(self, seq: Callable[[], int], owned: Callable[[], bool]) -> None:
        self._seq = seq
        self._owned = owned
        self._lock = threading.Lock()
        self.started: weakref.WeakKeyDictionary[threading.Thread, Started] = (
            weakref.WeakKeyDictionary()
        )
        # Threads that outlived the window of the test that started them (and the threads
        # they start): thread -> nodeid of that test.
        self.late: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
        self._original: Any = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = threading.Thread.__dict__.get("start")
        if not callable(original):
            raise RuntimeError(f"threading.Thread has no start() (checked on {CHECKED_ON})")
        starts = self

        def start(thread: threading.Thread, *args: Any, **kwargs: Any) -> Any:
            starts._record(thread)
            return original(thread, *args, **kwargs)

        self._original = original
        threading.Thread.start = start  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            threading.Thread.start = self._original  # type: ignore[method-assign]
            self._original = None

    def _record(self, thread: threading.Thread) -> None:
        parent = threading.current_thread()
        with self._lock:
            self.started[thread] = Started(self._seq(), self._owned())
            blamed = self.late.get(parent)
            if blamed is not None:
                self.late[thread] = blamed  # a late thread's children are late too

    def running_since(self, seq: int) -> list[threading.Thread]:
        """Threads started at or after `seq`, by no wider fixture, and still running."""
        current = threading.current_thread()
        with self._lock:
            started = list(self.started.items())
        return [
            t
            for t, s in started
            if s.seq >= seq and not s.owned and t is not current and t.is_alive()
        ]

    def blame(self, threads: list[threading.Thread], nodeid: str) -> None:
        with self._lock:
            for thread in threads:
                self.late.setdefault(thread, nodeid)

    def blamed(self) -> str | None:
        """The test the current thread's work is blamed on, if it outlived that test."""
        if not self.late:
            return None
        with self._lock:
            return self.late.get(threading.current_thread())
