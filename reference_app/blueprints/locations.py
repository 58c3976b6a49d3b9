"""Locations a buggy can be called to."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from ..auth import login_required
from ..extensions import db
from ..models import Location, Role
from ..validation import json_body, optional_str, required_str

bp = Blueprint("locations", __name__, url_prefix="/api/locations")


@bp.get("")
def list_locations() -> Response:
    locations = db.session.scalars(select(Location).order_by(Location.name))
    return jsonify([location.to_dict() for location in locations])


@bp.post("")
@login_required(Role.ADMIN.value)
def create_location() -> tuple[Response, int]:
    data = json_body()
    location = Location(
        name=required_str(data, "name", max_length=120),
        description=optional_str(data, "description", max_length=500) or "",
    )
    db.session.add(location)
    db.session.commit()  # a duplicate name is an IntegrityError: answered 409
    return jsonify(location.to_dict()), 201
