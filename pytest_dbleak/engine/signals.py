"""How the run's end reaches what it started, however the run ends.

No pytest import. CI systems cancel a job with SIGTERM, whose default action ends Python
at once: the session database and user on a url backend's server would stay behind. And
a reaper learns that pytest has ended from EOF on its stdin, so only pytest may hold the
writing end: a forked child (multiprocessing) that outlived the test would keep it open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO

# Reapers' pipes, closed in every forked child.
_REAPER_PIPES: weakref.WeakSet[IO[str]] = weakref.WeakSet()


def keep_out_of_forks(pipe: IO[str] | None) -> None:
    """Close `pipe` in forked children, so that EOF reaches the reaper when pytest ends."""
    if pipe is not None:
        _REAPER_PIPES.add(pipe)


def _close_reaper_pipes() -> None:
    for pipe in list(_REAPER_PIPES):
        with contextlib.suppress(OSError, ValueError):
            pipe.close()
    _REAPER_PIPES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_reaper_pipes)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> Callable[[], None]:
    """Turn SIGTERM into KeyboardInterrupt while nobody else handles it; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None  # the user's (or another plugin's) handler stays in charge
    signal.signal(signal.SIGTERM, _interrupt)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return undo


# The signals that came while clean-up held them back; None when nothing is held.
_HELD: list[int] | None = None


@contextlib.contextmanager
def interrupts_held() -> Iterator[list[int]]:
    """Hold Ctrl-C (and SIGTERM) back while clean-up runs; yields the signals that came.

    A KeyboardInterrupt raised half-way through stopping the server or removing a folder
    would leave them behind. The clean-up here is short and bounded, so it finishes
    first; the caller then ends the run as interrupted. Nested holds share the outer one.
    """
    global _HELD
    if _HELD is not None or threading.current_thread() is not threading.main_thread():
        yield _HELD if _HELD is not None else []
        return
    came: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        came.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _HELD = came
    try:
        for sig in previous:
            signal.signal(sig, hold)
        yield came
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _HELD = None


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Run the block whole, then raise the KeyboardInterrupt that came meanwhile.

    For imports at start-up: pytest cannot render a KeyboardInterrupt raised inside a
    module being imported (an INTERNALERROR), but renders one raised here.
    """
    with interrupts_held() as came:
        yield
    if came:
        raise KeyboardInterrupt(f"signal {came[0]}")
