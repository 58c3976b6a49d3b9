"""A user's own notifications."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from ..auth import current_user, login_required
from ..extensions import db
from ..models import Notification

bp = Blueprint("notifications", __name__, url_prefix="/api/notifications")


@bp.get("")
@login_required()
def list_notifications() -> Response:
    rows = db.session.scalars(
        select(Notification)
        .where(Notification.user_id == current_user().id)
        .order_by(Notification.id.desc())
        .limit(50)
    )
    return jsonify([row.to_dict() for row in rows])
