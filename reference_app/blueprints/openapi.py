"""The API's OpenAPI description."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..openapi import openapi_document

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())
