"""Users, drivers and their buggies (admin)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from ..auth import hash_password, login_required
from ..errors import ValidationError
from ..extensions import db
from ..models import Buggy, Role, User
from ..validation import json_body, one_of, optional_id, required_str

bp = Blueprint("fleet", __name__, url_prefix="/api")

ROLES = tuple(role.value for role in Role)


@bp.post("/users")
@login_required(Role.ADMIN.value)
def create_user() -> tuple[Response, int]:
    data = json_body()
    user = User(
        username=required_str(data, "username", max_length=80),
        password_hash=hash_password(required_str(data, "password", max_length=200)),
        role=one_of(data, "role", ROLES),
    )
    db.session.add(user)
    db.session.commit()
    return jsonify(user.to_dict()), 201


@bp.get("/buggies")
@login_required(Role.ADMIN.value)
def list_buggies() -> Response:
    buggies = db.session.scalars(select(Buggy).order_by(Buggy.code))
    return jsonify([buggy.to_dict() for buggy in buggies])


@bp.post("/buggies")
@login_required(Role.ADMIN.value)
def create_buggy() -> tuple[Response, int]:
    data = json_body()
    buggy = Buggy(code=required_str(data, "code", max_length=32))
    driver_id = optional_id(data, "driver_id")
    if driver_id is not None:
        driver = db.session.get(User, driver_id)
        if driver is None or driver.role != Role.DRIVER.value:
            raise ValidationError("'driver_id' must name a driver", field="driver_id")
        buggy.driver_id = driver_id
    db.session.add(buggy)
    db.session.commit()  # a driver already assigned elsewhere: IntegrityError, 409
    return jsonify(buggy.to_dict()), 201
