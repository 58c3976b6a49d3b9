"""Socket.IO: drivers, guests and admins connect with ``auth={"token": ...}``.

Handlers run inside a request context that Flask-SocketIO pushes per event,
so the teardown handlers clean the session after each one. The disconnect
work runs later, in a background task with its own app context.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, join_room

from ..auth import user_from_token
from ..errors import ApiError
from ..extensions import db, socketio
from ..models import Role
from ..services import fleet, realtime, retry
from ..tasks import get_tasks
from ..validation import required_id

logger = logging.getLogger(__name__)


def _identity() -> dict[str, Any] | None:
    identity: dict[str, Any] | None = session.get("identity")
    return identity


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    token = auth.get("token") if isinstance(auth, dict) else None
    user = user_from_token(token)
    if user is None:
        raise ConnectionRefusedError("authentication required")
    sid: str = request.sid  # type: ignore[attr-defined]
    identity: dict[str, Any] = {"user_id": user.id, "role": user.role}
    rooms = [realtime.user_room(user.id)]
    if user.role == Role.ADMIN.value:
        rooms.append(realtime.ADMINS)
    elif user.role == Role.DRIVER.value:
        buggy = retry.on_deadlock(lambda: fleet.bring_online(user.id, sid))
        if buggy is None:
            raise ConnectionRefusedError("no buggy is assigned to this driver")
        identity["buggy"] = buggy
        rooms.append(realtime.DRIVERS)
    for room in rooms:
        join_room(room)
    session["identity"] = identity
    logger.info("socket %s connected: user %d (%s)", sid, user.id, user.role)


@socketio.on("location_update")
def on_location_update(data: Any = None) -> dict[str, Any]:
    identity = _identity()
    if identity is None or identity["role"] != Role.DRIVER.value:
        return {"error": "forbidden", "message": "only drivers send locations"}
    try:
        location_id = required_id(data if isinstance(data, dict) else {}, "location_id")
        buggy = fleet.move(identity["user_id"], location_id)
    except ApiError as error:
        db.session.rollback()
        return {"error": error.code, "message": error.message}
    return {"ok": True, "buggy": buggy}


@socketio.on("disconnect")
def on_disconnect(reason: Any = None) -> None:
    identity = _identity()
    if identity is None or "buggy" not in identity:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    get_tasks(app).start(
        app, _handle_driver_disconnect_async, identity["user_id"], identity["buggy"]
    )
    logger.info("driver %d disconnected (%s)", identity["user_id"], reason)


def _handle_driver_disconnect_async(user_id: int, buggy_data: dict[str, Any]) -> None:
    """Buggy offline, the driver's accepted requests back to pending, admins
    told. Started with ``BackgroundTasks.start``, which runs it inside
    ``with app.app_context():`` so the session is removed when it ends."""
    result = retry.on_deadlock(lambda: fleet.take_offline(user_id, buggy_data))
    logger.info("driver %d offline handling done: %s", user_id, result)


@socketio.on_error_default
def on_error(error: Exception) -> Any:
    # The teardown handlers roll back and remove the session after this.
    logger.exception("socket event %s failed", request.event["message"])  # type: ignore[attr-defined]
    if request.event["message"] == "connect":  # type: ignore[attr-defined]
        return False  # any other answer would accept the connection
    return {"error": "internal_error", "message": "internal server error"}
