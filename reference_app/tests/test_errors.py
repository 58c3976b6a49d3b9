"""Errors are JSON, bad input is a 4xx, and no error path keeps a connection."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from reference_app.extensions import db
from reference_app.models import Location

from .support import World, queue_pool


def checked_out(app: Flask) -> int:
    with app.app_context():
        return queue_pool().checkedout()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/no/such/page", {}, 404),
        ("DELETE", "/api/locations", {}, 405),
        ("POST", "/api/auth/login", {"data": "{not json", "content_type": "application/json"}, 400),
        ("POST", "/api/auth/login", {"data": "plain", "content_type": "text/plain"}, 400),
        ("POST", "/api/auth/login", {"json": ["a", "list"]}, 400),
        ("POST", "/api/auth/login", {"json": {"username": "guest1", "password": 7}}, 400),
        ("GET", "/api/requests/1", {}, 401),
    ],
)
def test_errors_are_json_and_release_the_connection(
    app: Flask, client: FlaskClient, world: World, method: str, path: str, kwargs: dict, status: int
) -> None:
    response = client.open(path, method=method, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert set(body) >= {"error", "message"}
    assert checked_out(app) == 0


def test_405_names_the_allowed_methods(client: FlaskClient) -> None:
    response = client.delete("/api/locations")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_an_unexpected_error_is_a_json_500_that_rolls_back(app: Flask, client: FlaskClient) -> None:
    @app.post("/test/boom")
    def boom() -> str:
        db.session.add(Location(name="half-written"))
        db.session.flush()  # the row exists inside this transaction only
        raise RuntimeError("the code broke after writing")

    response = client.post("/test/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal_error", "message": "internal server error"}
    assert checked_out(app) == 0
    with app.app_context():
        assert (
            db.session.scalar(text("SELECT COUNT(*) FROM locations WHERE name = 'half-written'"))
            == 0
        )


def test_many_bad_requests_leave_the_pool_as_they_found_it(
    app: Flask, client: FlaskClient, world: World
) -> None:
    for _ in range(50):
        client.post("/api/requests", json={"location_id": "x"}, headers=world.guest.headers)
        client.post("/api/requests", json={"location_id": 999999}, headers=world.guest.headers)
        client.post("/api/locations", json={"name": "Main Lobby"}, headers=world.admin.headers)
    with app.app_context():
        pool = queue_pool()
        assert pool.checkedout() == 0
        assert pool.checkedin() <= 2  # sequential requests reuse one connection
