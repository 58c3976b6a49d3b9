"""Buggies coming online, moving and going offline with their driver's socket."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..errors import Conflict, NotFound
from ..extensions import db
from ..models import Buggy, BuggyStatus, GuestRequest, Location, RequestStatus, utcnow
from . import dispatch, notifications, realtime, system_log


def _accepted_by(driver_id: int, *, lock: bool = False) -> list[GuestRequest]:
    query = select(GuestRequest).where(
        GuestRequest.driver_id == driver_id,
        GuestRequest.status == RequestStatus.ACCEPTED.value,
    )
    return list(db.session.scalars(query.with_for_update() if lock else query))


def _locked_buggy_of(driver_id: int) -> Buggy | None:
    return db.session.scalar(select(Buggy).where(Buggy.driver_id == driver_id).with_for_update())


def bring_online(driver_id: int, sid: str) -> dict[str, Any] | None:
    """The driver's socket connected: the buggy is available (or busy if the
    driver still serves a request). Returns what the disconnect needs."""
    serving = _accepted_by(driver_id)
    buggy = _locked_buggy_of(driver_id)
    if buggy is None:
        return None
    buggy.status = (BuggyStatus.BUSY if serving else BuggyStatus.AVAILABLE).value
    buggy.socket_sid = sid
    buggy.last_seen_at = utcnow()
    data = buggy.to_dict()
    db.session.commit()
    realtime.buggy_changed(data)
    return {"buggy_id": data["id"], "code": data["code"], "sid": sid}


def move(driver_id: int, location_id: int) -> dict[str, Any]:
    if db.session.get(Location, location_id) is None:
        raise NotFound(f"location {location_id} not found")
    serving = _accepted_by(driver_id)
    buggy = _locked_buggy_of(driver_id)
    if buggy is None:
        raise Conflict("you have no buggy assigned")
    buggy.location_id = location_id
    buggy.last_seen_at = utcnow()
    data = buggy.to_dict()
    guests = [request.guest_id for request in serving]
    db.session.commit()
    realtime.buggy_changed(data, guests)
    return data


def take_offline(driver_id: int, buggy_data: dict[str, Any]) -> dict[str, Any]:
    """The driver's socket is gone: buggy offline, their accepted requests
    back to pending, admins told. A newer socket of the same driver wins."""
    requests = _accepted_by(driver_id, lock=True)
    buggy = _locked_buggy_of(driver_id)
    if buggy is None or buggy.socket_sid != buggy_data.get("sid"):
        db.session.rollback()
        return {"offline": False, "requeued": []}
    buggy.status = BuggyStatus.OFFLINE.value
    buggy.socket_sid = None
    buggy.last_seen_at = utcnow()
    outbox = dispatch.Outbox()
    for request in requests:
        request.status = RequestStatus.PENDING.value
        request.driver_id = request.buggy_id = request.accepted_at = None
        outbox.notifications.append(
            notifications.notify(request.guest_id, "request_requeued", {"request_id": request.id})
        )
        outbox.updated.append((request.to_dict(), (driver_id,)))
    requeued = [request.id for request in requests]
    event = {"driver_id": driver_id, "buggy": buggy_data, "requeued": requeued}
    outbox.notifications.extend(notifications.notify_admins("driver_offline", event))
    system_log.record(
        "warning",
        "fleet",
        f"driver {driver_id} disconnected; buggy {buggy.code} offline; requeued {requeued}",
    )
    buggy_state = buggy.to_dict()
    outbox.commit_and_publish()
    realtime.buggy_changed(buggy_state)
    # Admins also see how long the queue is now.
    realtime.driver_offline({**event, "pending_requests": dispatch.count_pending()})
    return {"offline": True, "requeued": requeued}
