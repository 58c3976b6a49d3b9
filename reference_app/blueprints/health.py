"""Liveness and the connection pool report."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..db_monitor import get_monitor
from ..models import utcnow

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    # Liveness only: the process answers. The database is /db-pool-status's job.
    return jsonify(status="ok", timestamp=utcnow().isoformat(timespec="seconds"))


@bp.get("/db-pool-status")
def db_pool_status() -> Response:
    return jsonify(get_monitor().check_pool_health())
