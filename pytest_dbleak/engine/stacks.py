"""Where the code that opened or checked out a connection is: the caller's stack.

SQLAlchemy's asyncio layer (AsyncEngine, AsyncConnection, AsyncSession) runs the pool
inside a greenlet it spawns for each awaited call; that greenlet's frames end at its own
start and do not contain the coroutine that awaited it. That coroutine is suspended in
the parent greenlet (in ``greenlet_spawn``), and a suspended coroutine's frames are
linked through ``f_back`` to the coroutines awaiting it. So the stack goes on in each
parent greenlet (``gr_frame``, greenlet's public API) until the user's ``await`` line.

No pytest import, no source file read.
"""

from __future__ import annotations

import sys
from typing import Any

Frame = tuple[str, int, str]  # (filename, line number, function)
STACK_LIMIT = 64


def capture_stack(skip: int = 1) -> tuple[Frame, ...]:
    """The caller's stack, innermost first; across greenlets to the awaiting coroutine."""
    frames: list[Frame] = []
    _walk(sys._getframe(skip + 1), frames)
    greenlet = sys.modules.get("greenlet")  # never imported here: no greenlet, no cost
    if greenlet is not None and len(frames) < STACK_LIMIT:
        parent = greenlet.getcurrent().parent
        while parent is not None and len(frames) < STACK_LIMIT:
            _walk(parent.gr_frame, frames)
            parent = parent.parent
    return tuple(frames)


def _walk(frame: Any, frames: list[Frame]) -> None:
    while frame is not None and len(frames) < STACK_LIMIT:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back


def stack_of(frame: Any) -> tuple[Frame, ...]:
    """`frame` and its callers, innermost first: also another thread's frame."""
    frames: list[Frame] = []
    _walk(frame, frames)
    return tuple(frames)
