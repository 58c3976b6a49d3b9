"""Guest requests and buggies: the dispatch rules.

Rows are locked in one order everywhere (requests, then the buggy) so that
concurrent accept, cancel, complete and disconnect cannot deadlock. Each
change commits, then delivers its notifications and pushes its events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from ..errors import Conflict, Forbidden, NotFound
from ..extensions import db
from ..models import (
    OPEN_REQUEST_STATUSES,
    Buggy,
    BuggyStatus,
    GuestRequest,
    Location,
    Notification,
    RequestStatus,
    Role,
    User,
    utcnow,
)
from . import notifications, realtime, system_log


@dataclass
class Outbox:
    """What to send once the transaction has committed."""

    notifications: list[Notification] = field(default_factory=list)
    updated: list[tuple[dict[str, Any], tuple[int, ...]]] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)

    def commit_and_publish(self) -> None:
        db.session.flush()
        ids = [n.id for n in self.notifications]
        db.session.commit()
        notifications.deliver(ids)
        for request in self.created:
            realtime.request_created(request)
        for request, extra in self.updated:
            realtime.request_updated(request, *extra)


def _guest_notice(outbox: Outbox, request: GuestRequest, kind: str) -> None:
    outbox.notifications.append(
        notifications.notify(request.guest_id, kind, {"request_id": request.id})
    )


def can_see(user: User, request: GuestRequest) -> bool:
    if user.role == Role.ADMIN.value:
        return True
    if user.role == Role.GUEST.value:
        return request.guest_id == user.id
    return request.driver_id == user.id or request.status == RequestStatus.PENDING.value


def get_visible(user: User, request_id: int) -> GuestRequest:
    request = db.session.get(GuestRequest, request_id)
    # Not found and not yours answer the same: ids of others stay private.
    if request is None or not can_see(user, request):
        raise NotFound(f"request {request_id} not found")
    return request


def list_for(user: User, limit: int = 100) -> list[GuestRequest]:
    query = select(GuestRequest).order_by(GuestRequest.id.desc()).limit(limit)
    if user.role == Role.GUEST.value:
        query = query.where(GuestRequest.guest_id == user.id)
    elif user.role == Role.DRIVER.value:
        query = query.where(
            (GuestRequest.status == RequestStatus.PENDING.value)
            | (GuestRequest.driver_id == user.id)
        )
    return list(db.session.scalars(query))


def _locked_request(request_id: int) -> GuestRequest:
    request = db.session.get(GuestRequest, request_id, with_for_update=True)
    if request is None:
        raise NotFound(f"request {request_id} not found")
    return request


def _locked_buggy_of(driver_id: int) -> Buggy | None:
    return db.session.scalar(select(Buggy).where(Buggy.driver_id == driver_id).with_for_update())


def create_request(guest: User, location_id: int) -> dict[str, Any]:
    if db.session.get(Location, location_id) is None:
        raise NotFound(f"location {location_id} not found")
    open_request = db.session.scalar(
        select(GuestRequest.id).where(
            GuestRequest.guest_id == guest.id, GuestRequest.status.in_(OPEN_REQUEST_STATUSES)
        )
    )
    if open_request is not None:
        raise Conflict(f"you already have an open request ({open_request})")
    request = GuestRequest(guest_id=guest.id, location_id=location_id)
    db.session.add(request)
    db.session.flush()
    data = request.to_dict()
    outbox = Outbox(created=[data])
    outbox.commit_and_publish()
    return data


def accept_request(driver: User, request_id: int) -> dict[str, Any]:
    request = _locked_request(request_id)
    buggy = _locked_buggy_of(driver.id)
    if buggy is None:
        raise Conflict("you have no buggy assigned")
    if buggy.status == BuggyStatus.OFFLINE.value:
        raise Conflict("your buggy is offline: connect to the dispatch socket first")
    if buggy.status == BuggyStatus.BUSY.value:
        raise Conflict("finish your current request first")
    if request.status != RequestStatus.PENDING.value:
        raise Conflict(f"request {request_id} is {request.status}")
    now = utcnow()
    request.status = RequestStatus.ACCEPTED.value
    request.driver_id, request.buggy_id, request.accepted_at = driver.id, buggy.id, now
    buggy.status = BuggyStatus.BUSY.value
    outbox = Outbox()
    _guest_notice(outbox, request, "request_accepted")
    data = request.to_dict()
    outbox.updated.append((data, ()))
    outbox.commit_and_publish()
    return data


def complete_request(driver: User, request_id: int) -> dict[str, Any]:
    request = _locked_request(request_id)
    if request.driver_id != driver.id:
        raise Forbidden("only the driver serving a request can complete it")
    if request.status != RequestStatus.ACCEPTED.value:
        raise Conflict(f"request {request_id} is {request.status}")
    buggy = _locked_buggy_of(driver.id)
    request.status = RequestStatus.COMPLETED.value
    request.finished_at = utcnow()
    if buggy is not None and buggy.status == BuggyStatus.BUSY.value:
        buggy.status = BuggyStatus.AVAILABLE.value
    outbox = Outbox()
    _guest_notice(outbox, request, "request_completed")
    data = request.to_dict()
    outbox.updated.append((data, ()))
    outbox.commit_and_publish()
    return data


def cancel_request(user: User, request_id: int) -> dict[str, Any]:
    request = _locked_request(request_id)
    if user.role != Role.ADMIN.value and request.guest_id != user.id:
        if user.role == Role.GUEST.value:
            raise NotFound(f"request {request_id} not found")
        raise Forbidden("only the guest who made a request, or an admin, can cancel it")
    if request.status not in OPEN_REQUEST_STATUSES:
        raise Conflict(f"request {request_id} is {request.status}")
    driver_id = request.driver_id
    if driver_id is not None:
        buggy = _locked_buggy_of(driver_id)
        if buggy is not None and buggy.status == BuggyStatus.BUSY.value:
            buggy.status = BuggyStatus.AVAILABLE.value
    request.status = RequestStatus.CANCELLED.value
    request.finished_at = utcnow()
    outbox = Outbox()
    if user.id != request.guest_id:
        _guest_notice(outbox, request, "request_cancelled")
    data = request.to_dict()
    outbox.updated.append((data, (driver_id,) if driver_id else ()))
    outbox.commit_and_publish()
    return data


def time_out_stale_requests(older_than_seconds: float) -> list[int]:
    """Pending requests nobody took in time become ``timed_out``."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    # SKIP LOCKED: several processes may run this job at once.
    stale = db.session.scalars(
        select(GuestRequest)
        .where(
            GuestRequest.status == RequestStatus.PENDING.value,
            GuestRequest.created_at < cutoff,
        )
        .with_for_update(skip_locked=True)
    ).all()
    outbox = Outbox()
    now = utcnow()
    for request in stale:
        request.status = RequestStatus.TIMED_OUT.value
        request.finished_at = now
        _guest_notice(outbox, request, "request_timed_out")
        outbox.updated.append((request.to_dict(), ()))
    ids = [request.id for request in stale]
    if ids:
        system_log.record("warning", "dispatch", f"requests timed out: {ids}")
    outbox.commit_and_publish()
    return ids


def count_pending() -> int:
    query = select(func.count()).select_from(GuestRequest)
    return int(
        db.session.scalar(query.where(GuestRequest.status == RequestStatus.PENDING.value)) or 0
    )
