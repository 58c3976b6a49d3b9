"""Socket.IO rooms and the events the server pushes.

Rooms: ``admins``; ``drivers`` (online drivers, who see new requests);
``user:<id>`` (every socket of one user: a guest gets the updates of their
own requests there, a driver those of the requests they serve).
Events are emitted after the change is committed.
"""

from __future__ import annotations

import logging
from typing import Any

from ..extensions import socketio

logger = logging.getLogger(__name__)

ADMINS = "admins"
DRIVERS = "drivers"


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def emit(event: str, data: dict[str, Any], *rooms: str) -> None:
    for room in rooms:
        try:
            socketio.emit(event, data, to=room)
        except Exception:
            # The change is committed; a failed push (e.g. the message queue
            # is down) must not turn it into an error for the caller.
            logger.exception("could not emit %s to %s", event, room)


def request_created(request: dict[str, Any]) -> None:
    emit("request_created", request, DRIVERS, ADMINS, user_room(request["guest_id"]))


def request_updated(request: dict[str, Any], *extra_user_ids: int) -> None:
    rooms = [ADMINS, user_room(request["guest_id"])]
    if request.get("driver_id"):
        rooms.append(user_room(request["driver_id"]))
    rooms.extend(user_room(user_id) for user_id in extra_user_ids)
    emit("request_updated", request, *dict.fromkeys(rooms))


def buggy_changed(buggy: dict[str, Any], guest_ids: list[int] | None = None) -> None:
    emit("buggy_status", buggy, ADMINS, *(user_room(guest) for guest in guest_ids or []))


def driver_offline(data: dict[str, Any]) -> None:
    emit("driver_offline", data, ADMINS)
