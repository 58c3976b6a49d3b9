"""The OpenAPI 3.0 description of the HTTP API, served at ``/openapi.json``.

Written by hand next to the blueprints it describes: every operation, its
request body, and every status it answers with. Errors are always the
``Error`` object; the fuzz test (tests/test_openapi_fuzz.py) holds the app to
this document against a real server.
"""

from __future__ import annotations

from typing import Any

_ID = {"type": "integer", "minimum": 1}
_TEXT = {"type": "string"}
_WHEN = {"type": "string", "nullable": True}
_NULLABLE_ID = {"type": "integer", "nullable": True}


def _object(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"error": _TEXT, "message": _TEXT, "field": _TEXT}, required=["error", "message"]
    ),
    "User": _object({"id": _ID, "username": _TEXT, "role": {"enum": ["admin", "driver", "guest"]}}),
    "Location": _object({"id": _ID, "name": _TEXT, "description": _TEXT}),
    "Buggy": _object(
        {
            "id": _ID,
            "code": _TEXT,
            "status": {"enum": ["offline", "available", "busy"]},
            "driver_id": _NULLABLE_ID,
            "location_id": _NULLABLE_ID,
            "last_seen_at": _WHEN,
        }
    ),
    "Request": _object(
        {
            "id": _ID,
            "guest_id": _ID,
            "location_id": _ID,
            "status": {"enum": ["pending", "accepted", "completed", "cancelled", "timed_out"]},
            "driver_id": _NULLABLE_ID,
            "buggy_id": _NULLABLE_ID,
            "created_at": _WHEN,
            "accepted_at": _WHEN,
            "finished_at": _WHEN,
        }
    ),
    "Notification": _object(
        {
            "id": _ID,
            "kind": _TEXT,
            "payload": {"type": "object"},
            "status": _TEXT,
            "attempts": {"type": "integer"},
            "last_error": {"type": "string", "nullable": True},
            "next_attempt_at": _WHEN,
            "created_at": _WHEN,
            "sent_at": _WHEN,
        }
    ),
    "Me": {
        "allOf": [
            {"$ref": "#/components/schemas/User"},
            {"type": "object", "properties": {"buggy": {"$ref": "#/components/schemas/Buggy"}}},
        ]
    },
    "Health": _object({"status": {"enum": ["ok"]}, "timestamp": _TEXT}),
    "PoolStatus": _object(
        {
            "status": {"enum": ["healthy", "warning", "critical"]},
            "timestamp": _TEXT,
            "pool": {"type": "object"},
            "warnings": {"type": "array", "items": _TEXT},
            "details": {"type": "object"},
        }
    ),
}

_ERROR_TEXT = {
    400: "bad input (the field is named)",
    401: "no valid bearer token",
    403: "the token's role may not do this",
    404: "no such thing (or not yours)",
    409: "conflicts with the current state",
    503: "no database connection available in time",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    ok: tuple[int, dict[str, Any]],
    errors: tuple[int, ...],
    *,
    body: dict[str, Any] | None = None,
    auth: bool = True,
    database: bool = True,
) -> dict[str, Any]:
    status, schema = ok
    responses: dict[str, Any] = {str(status): {"description": "done", **_json(schema)}}
    codes = set(errors) | ({401} if auth else set()) | ({400} if body else set())
    codes |= {503} if database else set()
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERROR_TEXT[code], **_json(_ref("Error"))}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if auth:
        operation["security"] = [{"bearer": []}]
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(body)}
    return operation


_REQUEST_ID = [
    {"name": "request_id", "in": "path", "required": True, "schema": _ID},
]


def _request_action(summary: str, errors: tuple[int, ...]) -> dict[str, Any]:
    return {
        "parameters": _REQUEST_ID,
        "post": _operation(summary, (200, _ref("Request")), errors),
    }


PATHS: dict[str, Any] = {
    "/api/auth/login": {
        "post": _operation(
            "a token for a username and password",
            (200, _object({"token": _TEXT, "user": _ref("User")})),
            (401,),
            body=_object({"username": _TEXT, "password": _TEXT}),
            auth=False,
        )
    },
    "/api/me": {
        "get": _operation("the token's user (and a driver's buggy)", (200, _ref("Me")), ())
    },
    "/api/locations": {
        "get": _operation(
            "every location", (200, {"type": "array", "items": _ref("Location")}), (), auth=False
        ),
        "post": _operation(
            "add a location (admin)",
            (201, _ref("Location")),
            (403, 409),
            body=_object({"name": _TEXT, "description": _TEXT}, required=["name"]),
        ),
    },
    "/api/users": {
        "post": _operation(
            "add a user (admin)",
            (201, _ref("User")),
            (403, 409),
            body=_object(
                {
                    "username": _TEXT,
                    "password": _TEXT,
                    "role": {"enum": ["admin", "driver", "guest"]},
                }
            ),
        )
    },
    "/api/buggies": {
        "get": _operation(
            "every buggy (admin)", (200, {"type": "array", "items": _ref("Buggy")}), (403,)
        ),
        "post": _operation(
            "add a buggy, optionally with its driver (admin)",
            (201, _ref("Buggy")),
            (403, 409),
            body=_object({"code": _TEXT, "driver_id": _ID}, required=["code"]),
        ),
    },
    "/api/requests": {
        "get": _operation(
            "the requests the user may see", (200, {"type": "array", "items": _ref("Request")}), ()
        ),
        "post": _operation(
            "call a buggy to a location (guest)",
            (201, _ref("Request")),
            (403, 404, 409),
            body=_object({"location_id": _ID}),
        ),
    },
    "/api/requests/{request_id}": {
        "parameters": _REQUEST_ID,
        "get": _operation("one request", (200, _ref("Request")), (404,)),
    },
    "/api/requests/{request_id}/accept": _request_action(
        "take a pending request (driver, buggy online)", (403, 404, 409)
    ),
    "/api/requests/{request_id}/complete": _request_action(
        "finish the request being served (its driver)", (403, 404, 409)
    ),
    "/api/requests/{request_id}/cancel": _request_action(
        "cancel an open request (its guest or an admin)", (403, 404, 409)
    ),
    "/api/notifications": {
        "get": _operation(
            "the user's latest notifications",
            (200, {"type": "array", "items": _ref("Notification")}),
            (),
        )
    },
    "/health": {
        "get": _operation("liveness", (200, _ref("Health")), (), auth=False, database=False)
    },
    "/db-pool-status": {
        "get": _operation(
            "the connection pool report", (200, _ref("PoolStatus")), (), auth=False, database=False
        )
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "reference_app: the resort's buggy service",
            "version": "1",
            "description": "Errors are always {error, message[, field]} with a 4xx status.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
