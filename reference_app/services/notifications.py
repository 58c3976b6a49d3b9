"""Stored notifications and their delivery through a pluggable sender.

Rows are written in the caller's transaction (so a rolled-back change sends
nothing) and sent after it commits. No connection is held while a sender
works: sending is slow I/O in real deployments (SMTP, push services).

Several processes deliver at once (each runs the retry job, each request
delivers what it created): a process first *claims* the rows it will send, in
a short transaction (``FOR UPDATE SKIP LOCKED``, then ``claimed_by`` and
``claimed_until``), so no other process sees them as due; it records each
result only while its claim holds. A claim whose process crashed expires
after ``NOTIFICATION_CLAIM_SECONDS`` and the row is due again.
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

from ..claims import instance_id
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
        & (Notification.claimed_until.is_(None) | (Notification.claimed_until < now))
    )


def to_message(row: Notification) -> OutgoingNotification:
    return OutgoingNotification(row.id, row.user_id, row.kind, dict(row.payload), row.attempts + 1)


def deliver(ids: Iterable[int]) -> DeliveryReport:
    """Send the given notifications (after the transaction that made them)."""
    wanted = list(ids)
    if not wanted:
        return DeliveryReport()
    return _send_all(claim_due(len(wanted), Notification.id.in_(wanted)))


def deliver_due(limit: int) -> DeliveryReport:
    """Send up to ``limit`` notifications whose next attempt is due."""
    return _send_all(claim_due(limit))


def claim_due(limit: int, *where: Any) -> list[OutgoingNotification]:
    """Claim up to ``limit`` due notifications for this process and commit.

    Rows another process is claiming at this moment are skipped, not waited
    for; rows it has claimed are not due. The commit also ends the read
    transaction: no connection is held while the sender works.
    """
    now = utcnow()
    rows = db.session.scalars(
        select(Notification)
        .where(due_filter(now), *where)
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    messages = [to_message(row) for row in rows]
    if messages:
        lease = timedelta(seconds=current_app.config["NOTIFICATION_CLAIM_SECONDS"])
        db.session.execute(
            update(Notification)
            .where(Notification.id.in_([message.id for message in messages]))
            .values(claimed_by=instance_id(), claimed_until=now + lease)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()
    return messages


def _send_all(messages: Sequence[OutgoingNotification]) -> DeliveryReport:
    sender = get_sender()
    report = DeliveryReport()
    claimant = instance_id()
    for message in messages:
        error = attempt_send(sender, message)
        if not record_attempt(message.id, message.attempt, error, claimed_by=claimant):
            logger.warning(
                "notification %d: the claim expired before the result was recorded", message.id
            )
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


def record_attempt(
    notification_id: int, attempt: int, error: str | None, *, claimed_by: str | None = None
) -> bool:
    """Record a send's result and release the claim; False if the row was not
    (or no longer) ours to record: another process handled it."""
    now = utcnow()
    values: dict[str, Any] = {
        "attempts": Notification.attempts + 1,
        "last_error": error,
        "claimed_by": None,
        "claimed_until": None,
    }
    if error is None:
        values.update(status=NotificationStatus.SENT.value, sent_at=now)
    else:
        values.update(
            status=NotificationStatus.FAILED.value, next_attempt_at=_backoff(now, attempt)
        )
    # Only rows still waiting, and still claimed by us when we claimed them.
    still_ours = (
        Notification.claimed_by == claimed_by
        if claimed_by is not None
        else Notification.claimed_by.is_(None)
    )
    result = cast(
        CursorResult[Any],
        db.session.execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.status.in_(_RETRYABLE),
                still_ours,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ),
    )
    return bool(result.rowcount)


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
