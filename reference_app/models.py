"""The resort's buggy service: users, locations, buggies, requests, notifications, logs."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .charset import TABLE_OPTIONS
from .extensions import db

# Flask-SQLAlchemy builds db.Model at run time; mypy cannot see it as a base
# class, hence the ignores on the class lines below.

# Microsecond precision: MySQL's DATETIME defaults to whole seconds, which
# makes "older than" and ordering comparisons coarse.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def utcnow() -> datetime:
    """Naive UTC, as stored in DATETIME columns."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Role(str, enum.Enum):
    ADMIN = "admin"
    DRIVER = "driver"
    GUEST = "guest"


class BuggyStatus(str, enum.Enum):
    OFFLINE = "offline"
    AVAILABLE = "available"
    BUSY = "busy"


class RequestStatus(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


OPEN_REQUEST_STATUSES = (RequestStatus.PENDING.value, RequestStatus.ACCEPTED.value)


class NotificationStatus(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    PERMANENTLY_FAILED = "permanently_failed"


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"
    __table_args__ = TABLE_OPTIONS

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    buggy: Mapped[Buggy | None] = relationship(back_populates="driver", uselist=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role}


class Location(db.Model):  # type: ignore[name-defined]
    __tablename__ = "locations"
    __table_args__ = TABLE_OPTIONS

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description}


class Buggy(db.Model):  # type: ignore[name-defined]
    __tablename__ = "buggies"
    __table_args__ = TABLE_OPTIONS

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=BuggyStatus.OFFLINE.value)
    driver_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), unique=True)
    location_id: Mapped[int | None] = mapped_column(ForeignKey("locations.id"))
    # The Socket.IO session that brought the buggy online: a disconnect of an
    # older session must not take a reconnected driver offline.
    socket_sid: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None] = mapped_column(Timestamp)

    driver: Mapped[User | None] = relationship(back_populates="buggy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "status": self.status,
            "driver_id": self.driver_id,
            "location_id": self.location_id,
            "last_seen_at": _iso(self.last_seen_at),
        }


class GuestRequest(db.Model):  # type: ignore[name-defined]
    __tablename__ = "requests"
    __table_args__ = (Index("ix_requests_status_created", "status", "created_at"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    guest_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("locations.id"))
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.PENDING.value)
    driver_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    buggy_id: Mapped[int | None] = mapped_column(ForeignKey("buggies.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    accepted_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "guest_id": self.guest_id,
            "location_id": self.location_id,
            "status": self.status,
            "driver_id": self.driver_id,
            "buggy_id": self.buggy_id,
            "created_at": _iso(self.created_at),
            "accepted_at": _iso(self.accepted_at),
            "finished_at": _iso(self.finished_at),
        }


class Notification(db.Model):  # type: ignore[name-defined]
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(24), default=NotificationStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The process sending it right now, and until when its claim holds: a
    # claimed row is not due for anyone else; a claim whose holder crashed
    # expires and the row is due again.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(Timestamp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "payload": self.payload,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": _iso(self.next_attempt_at),
            "created_at": _iso(self.created_at),
            "sent_at": _iso(self.sent_at),
        }


class SystemLog(db.Model):  # type: ignore[name-defined]
    __tablename__ = "system_logs"
    __table_args__ = TABLE_OPTIONS

    id: Mapped[int] = mapped_column(primary_key=True)
    level: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)


class JobClaim(db.Model):  # type: ignore[name-defined]
    """One run of a scheduled job per schedule slot, across all processes: the
    process whose insert of (job, slot) succeeds runs it; the others skip."""

    __tablename__ = "job_claims"
    __table_args__ = TABLE_OPTIONS

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    claimed_by: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(Timestamp)
