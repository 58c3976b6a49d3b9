"""HTTP load on the real app, served on loopback by a threaded server.

The seed's check is ``ab -n 1000 -c 50 /api/locations``, then
``/db-pool-status`` shows nothing checked out and the server's connection
count does not grow from one round to the next. Writes and bad input get the
same treatment: a 4xx never leaks.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from reference_app.demo import seed_demo
from reference_app.extensions import db
from reference_app.models import Location

from ..support import PASSWORD, World
from .conftest import PoolFacts, app_session, checked_out_now

JSON = {"Content-Type": "application/json"}


def demo_locations(app: Flask) -> int:
    """The demo's locations (``init-db --demo``); how many there are."""
    with app_session(app):
        seed_demo(PASSWORD)
        db.session.commit()
    return location_count(app)


def location_count(app: Flask) -> int:
    with app_session(app):
        return int(db.session.scalar(select(func.count()).select_from(Location)) or 0)


def assert_pool_settled(facts: PoolFacts) -> None:
    assert facts.checked_out == 0, facts
    assert facts.overflow == 0, facts
    assert facts.status == "healthy", facts
    # Idle connections the pool keeps, and never more than the process may open.
    assert facts.checked_in <= facts.pool_size, facts
    assert facts.server_connections <= facts.ceiling, facts


@pytest.mark.dbleak_http_load(requests=1000, concurrency=50)
def test_the_seeds_load_on_locations_two_rounds(
    app: Flask,
    world: World,
    dbleak_http_load: Any,
    pool_facts: Callable[[], PoolFacts],
    record_property: Callable[[str, object], None],
) -> None:
    """ab -n 1000 -c 50 /api/locations, twice: all 200s, the pool settles,
    and the server's connections do not grow beyond the pool from one round
    to the next."""
    expected = demo_locations(app)
    after: list[PoolFacts] = []
    for round_ in (1, 2):
        result = dbleak_http_load.run(app, "/api/locations")
        assert result.statuses == {200: 1000}, (round_, result.statuses, result.failure_samples)
        assert result.failures == 0
        assert result.latency_ms is not None
        record_property(f"round{round_}", json.dumps(result.as_dict()))
        facts = pool_facts()
        assert_pool_settled(facts)
        after.append(facts)
    # Between rounds the pool may keep a few more idle connections (as many as
    # were ever in use at once, up to pool_size): legitimate growth. What must
    # not grow is what the server holds beyond the pool's idle connections.
    second = after[1]
    outside = [facts.server_connections - facts.checked_in for facts in after]
    assert outside[1] <= outside[0] <= 0, after
    assert second.server_connections <= second.pool_size, after
    with app.test_client() as client:
        assert len(client.get("/api/locations").get_json()) == expected


class UniqueNames:
    """WSGI middleware: each POST body gets its own location name, as distinct
    clients would send. The application underneath is unchanged."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self._lock:
            number = next(self._numbers)
        body = json.dumps({"name": f"Stop {number:04d}", "description": "under load"}).encode()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


@pytest.mark.dbleak_http_load(requests=500, concurrency=50)
def test_creating_locations_under_load(
    app: Flask, world: World, dbleak_http_load: Any, pool_facts: Callable[[], PoolFacts]
) -> None:
    before = location_count(app)
    result = dbleak_http_load.run(
        UniqueNames(app),
        "/api/locations",
        method="POST",
        headers={**JSON, **world.admin.headers},
        body=b"{}",  # replaced per request by UniqueNames
    )
    assert result.statuses == {201: 500}, (result.statuses, result.failure_samples)
    assert result.failures == 0
    assert location_count(app) == before + 500
    assert_pool_settled(pool_facts())


@pytest.mark.dbleak_http_load(requests=500, concurrency=50)
def test_the_same_location_created_concurrently(
    app: Flask, world: World, dbleak_http_load: Any, pool_facts: Callable[[], PoolFacts]
) -> None:
    """500 concurrent inserts of one unique name: one 201, the rest 409 after
    their failed commit is rolled back."""
    before = location_count(app)
    result = dbleak_http_load.run(
        app,
        "/api/locations",
        method="POST",
        headers={**JSON, **world.admin.headers},
        body=json.dumps({"name": "Helipad"}),
    )
    assert result.statuses == {201: 1, 409: 499}, (result.statuses, result.failure_samples)
    assert result.failures == 0
    assert location_count(app) == before + 1
    assert_pool_settled(pool_facts())


# (method, path, whose token, body, expected status)
BAD_INPUT: dict[str, tuple[str, str, str | None, str | None, int]] = {
    "malformed_json": ("POST", "/api/locations", "admin", "{not json", 400),
    "missing_field": ("POST", "/api/locations", "admin", '{"description": "no name"}', 400),
    "no_token": ("GET", "/api/me", None, None, 401),
    "forged_token": ("GET", "/api/me", "forged", None, 401),
    "wrong_role": ("POST", "/api/locations", "guest", '{"name": "Guest Stop"}', 403),
    "unknown_request": ("GET", "/api/requests/999999", "guest", None, 404),
    "unknown_location": ("POST", "/api/requests", "guest", '{"location_id": 999999}', 404),
    "wrong_method": ("DELETE", "/api/locations", None, None, 405),
}


@pytest.mark.dbleak_http_load(requests=200, concurrency=20)
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_under_load_never_leaks(
    app: Flask, world: World, dbleak_http_load: Any, case: str
) -> None:
    method, path, who, body, expected = BAD_INPUT[case]
    headers = dict(JSON)
    if who == "forged":
        headers["Authorization"] = "Bearer forged.token.value"
    elif who is not None:
        headers.update(getattr(world, who).headers)
    result = dbleak_http_load.run(app, path, method=method, headers=headers, body=body)
    assert result.statuses == {expected: 200}, (result.statuses, result.failure_samples)
    assert result.failures == 0
    assert checked_out_now(app) == 0
