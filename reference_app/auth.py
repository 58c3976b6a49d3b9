"""Passwords and signed bearer tokens (itsdangerous, keyed by SECRET_KEY)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, g, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import Forbidden, Unauthorized
from .extensions import db
from .models import User

F = TypeVar("F", bound=Callable[..., Any])

_SALT = "reference-app.auth"


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


def verify_password(user: User, password: str) -> bool:
    return check_password_hash(user.password_hash, password)


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def issue_token(user: User) -> str:
    return _serializer().dumps({"uid": user.id})


def user_from_token(token: object) -> User | None:
    """The token's user, or None for a missing, forged or expired token."""
    if not isinstance(token, str) or not token:
        return None
    try:
        data = _serializer().loads(token, max_age=current_app.config["TOKEN_MAX_AGE_SECONDS"])
    except (SignatureExpired, BadSignature):
        return None
    uid = data.get("uid") if isinstance(data, dict) else None
    if not isinstance(uid, int):
        return None
    return db.session.get(User, uid)


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def current_user() -> User:
    user: User = g.current_user
    return user


def login_required(*roles: str) -> Callable[[F], F]:
    """Require a valid token, and one of ``roles`` when given."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = user_from_token(_bearer_token())
            if user is None:
                raise Unauthorized("a valid bearer token is required")
            if roles and user.role not in roles:
                raise Forbidden(f"this needs the role: {' or '.join(roles)}")
            g.current_user = user
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
