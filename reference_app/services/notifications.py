"""Stored notifications and their delivery through a pluggable sender.

Rows are written in the caller's transaction (so a rolled-back change sends
nothing) and sent after it commits. No connection is held while a sender
works: sending is slow I/O in real deployments (SMTP, push services).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from flask import Flask, current_app
from sqlalchemy import CursorResult, func, select, update

from ..extensions import db
from ..models import Notification, NotificationStatus, User, utcnow

logger = logging.getLogger(__name__)

_RETRYABLE = (NotificationStatus.PENDING.value, NotificationStatus.FAILED.value)


@dataclass(frozen=True)
class OutgoingNotification:
    """What a sender gets: plain data, no ORM object, no session."""

    id: int
    user_id: int
    kind: str
    payload: dict[str, Any]
    attempt: int


class DeliveryError(Exception):
    """A sender could not deliver; the notification will be retried."""


class NotificationSender(Protocol):
    def send(self, message: OutgoingNotification) -> None: ...


class LoggingSender:
    """The default sender: it writes the notification to the log."""

    def send(self, message: OutgoingNotification) -> None:
        logger.info(
            "notification %d to user %d: %s %s",
            message.id,
            message.user_id,
            message.kind,
            message.payload,
        )


def load_sender(spec: object) -> NotificationSender:
    """Build the sender from config: "module:Class", a class, or an instance."""
    if isinstance(spec, str):
        module_name, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module_name), attr)
    if isinstance(spec, type):
        spec = spec()
    if not callable(getattr(spec, "send", None)):
        raise TypeError(f"notification sender {spec!r} has no send() method")
    return spec  # type: ignore[return-value]


def get_sender(app: Flask | None = None) -> NotificationSender:
    target = app if app is not None else current_app
    sender: NotificationSender = target.extensions["reference_app.notification_sender"]
    return sender


@dataclass
class DeliveryReport:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"sent": len(self.sent), "failed": len(self.failed)}


def notify(user_id: int, kind: str, payload: dict[str, Any]) -> Notification:
    """Queue a notification in the current transaction; deliver after commit."""
    notification = Notification(user_id=user_id, kind=kind, payload=payload)
    db.session.add(notification)
    return notification


def notify_admins(kind: str, payload: dict[str, Any]) -> list[Notification]:
    admin_ids = db.session.scalars(select(User.id).where(User.role == "admin")).all()
    return [notify(admin_id, kind, payload) for admin_id in admin_ids]


def due_filter(now: datetime) -> Any:
    max_attempts = current_app.config["NOTIFICATION_MAX_ATTEMPTS"]
    return (
        Notification.status.in_(_RETRYABLE)
        & (Notification.next_attempt_at <= now)
        & (Notification.attempts < max_attempts)
    )


def to_message(row: Notification) -> OutgoingNotification:
    return OutgoingNotification(row.id, row.user_id, row.kind, dict(row.payload), row.attempts + 1)


def deliver(ids: Iterable[int]) -> DeliveryReport:
    """Send the given notifications (after the transaction that made them)."""
    wanted = list(ids)
    if not wanted:
        return DeliveryReport()
    rows = db.session.scalars(
        select(Notification).where(Notification.id.in_(wanted), due_filter(utcnow()))
    ).all()
    return _send_all([to_message(row) for row in rows])


def deliver_due(limit: int) -> DeliveryReport:
    """Send up to ``limit`` notifications whose next attempt is due."""
    rows = db.session.scalars(
        select(Notification)
        .where(due_filter(utcnow()))
        .order_by(Notification.next_attempt_at)
        .limit(limit)
    ).all()
    return _send_all([to_message(row) for row in rows])


def _send_all(messages: Sequence[OutgoingNotification]) -> DeliveryReport:
    # End the read transaction first: the connection goes back to the pool
    # and is not held while the sender does its slow I/O.
    db.session.commit()
    sender = get_sender()
    report = DeliveryReport()
    for message in messages:
        error = attempt_send(sender, message)
        record_attempt(message.id, message.attempt, error)
        db.session.commit()
        (report.failed if error else report.sent).append(message.id)
    return report


def attempt_send(sender: NotificationSender, message: OutgoingNotification) -> str | None:
    """Send one message; the error text, or None when it went out."""
    try:
        sender.send(message)
    except DeliveryError as error:
        logger.warning("notification %d attempt %d failed: %s", message.id, message.attempt, error)
        return str(error) or type(error).__name__
    except Exception as error:
        # A broken sender must not stop the other deliveries; it is recorded
        # on the row and retried like any failure.
        logger.exception("notification sender crashed on %d", message.id)
        return f"{type(error).__name__}: {error}"
    return None


def record_attempt(notification_id: int, attempt: int, error: str | None) -> None:
    now = utcnow()
    values: dict[str, Any] = {"attempts": Notification.attempts + 1, "last_error": error}
    if error is None:
        values.update(status=NotificationStatus.SENT.value, sent_at=now)
    else:
        values.update(
            status=NotificationStatus.FAILED.value, next_attempt_at=_backoff(now, attempt)
        )
    # Only rows still waiting: another worker may have handled this one.
    db.session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status.in_(_RETRYABLE))
        .values(**values)
    )


def _backoff(now: datetime, attempt: int) -> datetime:
    """Exponential back-off: base, 2x base, 4x base ... capped at one hour."""
    base = current_app.config["NOTIFICATION_RETRY_BASE_SECONDS"]
    return now + timedelta(seconds=min(base * 2 ** max(attempt - 1, 0), 3600))


def give_up_exhausted() -> int:
    """Mark failed notifications that used all their attempts."""
    max_attempts = current_app.config["NOTIFICATION_MAX_ATTEMPTS"]
    result = cast(
        CursorResult[Any],
        db.session.execute(
            update(Notification)
            .where(
                Notification.status == NotificationStatus.FAILED.value,
                Notification.attempts >= max_attempts,
            )
            .values(status=NotificationStatus.PERMANENTLY_FAILED.value)
        ),
    )
    return int(result.rowcount or 0)


def count_due() -> int:
    return int(
        db.session.scalar(
            select(func.count()).select_from(Notification).where(due_filter(utcnow()))
        )
        or 0
    )
