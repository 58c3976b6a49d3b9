"""Locations: public list, admin-only creation."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from .support import World


def test_anyone_lists_locations(client: FlaskClient, world: World) -> None:
    response = client.get("/api/locations")
    assert response.status_code == 200
    assert [loc["name"] for loc in response.get_json()] == ["Beach Club", "Main Lobby"]


def test_an_admin_creates_a_location(client: FlaskClient, world: World) -> None:
    response = client.post(
        "/api/locations",
        json={"name": "Spa", "description": "Wellness"},
        headers=world.admin.headers,
    )
    assert response.status_code == 201
    assert response.get_json()["name"] == "Spa"
    assert "Spa" in [loc["name"] for loc in client.get("/api/locations").get_json()]


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("guest", 403), ("driver", 403)])
def test_only_admins_create_locations(
    client: FlaskClient, world: World, who: str | None, status: int
) -> None:
    headers = getattr(world, who).headers if who else {}
    response = client.post("/api/locations", json={"name": "Spa"}, headers=headers)
    assert response.status_code == status
    assert "Spa" not in [loc["name"] for loc in client.get("/api/locations").get_json()]


def test_a_duplicate_name_is_409(client: FlaskClient, world: World) -> None:
    response = client.post(
        "/api/locations", json={"name": "Main Lobby"}, headers=world.admin.headers
    )
    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"


@pytest.mark.parametrize(
    "body", [{}, {"name": ""}, {"name": 3}, {"name": "x" * 121}, {"name": "ok", "description": 1}]
)
def test_invalid_bodies_are_400(client: FlaskClient, world: World, body: dict) -> None:
    response = client.post("/api/locations", json=body, headers=world.admin.headers)
    assert response.status_code == 400
