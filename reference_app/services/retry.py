"""Running a unit of work again when InnoDB chose it as a deadlock victim.

InnoDB rolls back one of two transactions that wait on each other (1213) and expects
the application to run it again; a lock wait timeout (1205) is retried the same way.
The session is rolled back first, so the retry starts from a clean transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from ..extensions import db

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRIED_ERRORS = {1205, 1213}  # lock wait timeout, deadlock


def on_deadlock(work: Callable[[], T], attempts: int = 5) -> T:
    for attempt in range(1, attempts):
        try:
            return work()
        except OperationalError as exc:
            db.session.rollback()
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code not in RETRIED_ERRORS:
                raise
            logger.warning("retrying after MySQL error %s (attempt %d)", code, attempt)
            time.sleep(0.01 * attempt)  # back off a little, so the winner can commit
    return work()  # the last attempt: its error is the caller's
