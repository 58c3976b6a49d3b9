"""SIGTERM ends a run like Ctrl-C, so that its clean-up runs.

No pytest import. CI systems cancel a job with SIGTERM, whose default action ends Python
at once: the session database and user on a url backend's server would stay behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


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
