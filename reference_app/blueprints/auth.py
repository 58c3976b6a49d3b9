"""Login: a username and password for a signed token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from ..auth import current_user, issue_token, login_required, verify_password
from ..errors import Unauthorized
from ..extensions import db
from ..models import User
from ..validation import json_body, required_str

bp = Blueprint("auth", __name__, url_prefix="/api")


@bp.post("/auth/login")
def login() -> Response:
    data = json_body()
    username = required_str(data, "username", max_length=80)
    password = required_str(data, "password", max_length=200)
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None or not verify_password(user, password):
        raise Unauthorized("wrong username or password")
    return jsonify(token=issue_token(user), user=user.to_dict())


@bp.get("/me")
@login_required()
def me() -> Response:
    user = current_user()
    body = user.to_dict()
    if user.buggy is not None:
        body["buggy"] = user.buggy.to_dict()
    return jsonify(body)
