"""Guest requests: call a buggy, follow it, cancel it; drivers accept and complete."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..auth import current_user, login_required
from ..models import Role
from ..services import dispatch
from ..validation import json_body, required_id

bp = Blueprint("requests", __name__, url_prefix="/api/requests")


@bp.post("")
@login_required(Role.GUEST.value)
def create_request() -> tuple[Response, int]:
    location_id = required_id(json_body(), "location_id")
    return jsonify(dispatch.create_request(current_user(), location_id)), 201


@bp.get("")
@login_required()
def list_requests() -> Response:
    return jsonify([request.to_dict() for request in dispatch.list_for(current_user())])


@bp.get("/<int:request_id>")
@login_required()
def get_request(request_id: int) -> Response:
    return jsonify(dispatch.get_visible(current_user(), request_id).to_dict())


@bp.post("/<int:request_id>/accept")
@login_required(Role.DRIVER.value)
def accept(request_id: int) -> Response:
    return jsonify(dispatch.accept_request(current_user(), request_id))


@bp.post("/<int:request_id>/complete")
@login_required(Role.DRIVER.value)
def complete(request_id: int) -> Response:
    return jsonify(dispatch.complete_request(current_user(), request_id))


@bp.post("/<int:request_id>/cancel")
@login_required(Role.GUEST.value, Role.ADMIN.value)
def cancel(request_id: int) -> Response:
    return jsonify(dispatch.cancel_request(current_user(), request_id))
