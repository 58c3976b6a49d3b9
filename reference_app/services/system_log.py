"""System log rows, kept for a retention period."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select

from ..extensions import db
from ..models import SystemLog, utcnow

logger = logging.getLogger(__name__)


def record(level: str, source: str, message: str) -> SystemLog:
    """Add a log row to the current transaction (and to the process log)."""
    logger.log(logging.getLevelName(level.upper()), "[%s] %s", source, message)
    row = SystemLog(level=level.lower(), source=source, message=message)
    db.session.add(row)
    return row


def purge_older_than(days: float) -> int:
    cutoff = utcnow() - timedelta(days=days)
    result = cast(
        CursorResult[Any],
        db.session.execute(delete(SystemLog).where(SystemLog.created_at < cutoff)),
    )
    return int(result.rowcount or 0)


def count() -> int:
    return int(db.session.scalar(select(func.count()).select_from(SystemLog)) or 0)
