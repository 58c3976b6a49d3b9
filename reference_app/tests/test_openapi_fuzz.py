"""The API fuzzed from its own OpenAPI description (schemathesis), against the
real app on the session's real server.

Every operation gets generated cases -- valid and invalid bodies, path ids of
every size -- each sent four times: as generated (no token, or a forged one)
and with a real admin, guest and driver token. Every answer must be
documented, JSON, never a 5xx, and an error must carry its code; nothing may
stay checked out afterwards (and the plugin's check around the test agrees).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .leaks.conftest import checked_out_now
from .support import World

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 40


@pytest.fixture
def fuzzed(app: Flask, world: World) -> tuple[Flask, World]:
    return app, world


@pytest.fixture
def api_schema(fuzzed: tuple[Flask, World]) -> Any:
    app, _ = fuzzed
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


def assert_error_is_json_with_its_code(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    assert isinstance(body.get("message"), str), body


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_generated_request_is_a_5xx_or_a_non_json_error(
    case: Any, fuzzed: tuple[Flask, World]
) -> None:
    app, world = fuzzed
    identities = [None, world.admin, world.guest, world.driver]
    for actor in identities:
        headers = None if actor is None else actor.headers
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        assert_error_is_json_with_its_code(response)
    assert checked_out_now(app) == 0


def test_the_description_is_served_and_names_every_route(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.0")
    described = {
        (path.replace("{request_id}", "<int:request_id>"), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
        and rule.endpoint not in {"static", "openapi.openapi_json"}
    }
    assert described == routes
