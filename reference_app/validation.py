"""Small helpers that read and check a JSON body."""

from __future__ import annotations

from typing import Any

from flask import request

from .errors import ValidationError


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 (never a 500) if it is not one."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("expected a JSON object body")
    return data


def required_str(data: dict[str, Any], field: str, *, max_length: int = 255) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{field}' must be a non-empty string", field=field)
    value = value.strip()
    if not _encodable(value):
        # A lone surrogate (JSON "\ud800") passes json.loads but no driver can send it.
        raise ValidationError(f"'{field}' is not valid Unicode text", field=field)
    if len(value) > max_length:
        raise ValidationError(f"'{field}' is longer than {max_length} characters", field=field)
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def optional_str(data: dict[str, Any], field: str, *, max_length: int = 255) -> str | None:
    if data.get(field) is None:
        return None
    return required_str(data, field, max_length=max_length)


def required_id(data: dict[str, Any], field: str) -> int:
    value = data.get(field)
    # bool is an int subclass; True is not an id.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise ValidationError(f"'{field}' must be a positive integer", field=field)
    return value


def optional_id(data: dict[str, Any], field: str) -> int | None:
    if data.get(field) is None:
        return None
    return required_id(data, field)


def one_of(data: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value = data.get(field)
    if value not in choices:
        raise ValidationError(f"'{field}' must be one of: {', '.join(choices)}", field=field)
    return str(value)
