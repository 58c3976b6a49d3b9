"""JSON error responses: bad input is a 4xx, never a 500 and never a held connection."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .db_monitor import get_monitor
from .extensions import db

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client caused or must know about, answered as JSON."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(ApiError):
    status = 400
    code = "validation_error"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


def one_line(error: BaseException) -> str:
    """A database error's driver message on one line (no SQL, no link)."""
    detail = getattr(error, "orig", None) or error
    return " ".join(str(detail).split())


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body: dict[str, object] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def _rollback() -> None:
    # The teardown handlers also clean up; rolling back here frees the
    # connection before the response is built.
    try:
        db.session.rollback()
    except Exception:
        logger.exception("rollback after a failed request did not complete")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError) -> Response:
        _rollback()
        return error_response(error.status, error.code, error.message, error.field)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or error.name)
        allowed = getattr(error, "valid_methods", None)  # MethodNotAllowed only
        if error.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(IntegrityError)
    def handle_integrity_error(error: IntegrityError) -> Response:
        _rollback()
        logger.info("integrity error answered with 409: %s", error.orig)
        return error_response(409, "conflict", "the data conflicts with an existing record")

    @app.errorhandler(PoolTimeoutError)
    def handle_pool_timeout(error: PoolTimeoutError) -> Response:
        get_monitor(app).record_timeout()
        logger.error("connection pool time-out: %s", error)
        return error_response(503, "database_busy", "no database connection available")

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        _rollback()
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
