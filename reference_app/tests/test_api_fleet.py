"""Users, drivers and buggies (admin)."""

from __future__ import annotations

from flask.testing import FlaskClient

from .support import World


def test_an_admin_adds_a_driver_and_a_buggy(client: FlaskClient, world: World) -> None:
    user = client.post(
        "/api/users",
        json={"username": "driver9", "password": "pw-9", "role": "driver"},
        headers=world.admin.headers,
    )
    assert user.status_code == 201
    buggy = client.post(
        "/api/buggies",
        json={"code": "B-09", "driver_id": user.get_json()["id"]},
        headers=world.admin.headers,
    )
    assert buggy.status_code == 201
    assert buggy.get_json()["status"] == "offline"
    codes = [b["code"] for b in client.get("/api/buggies", headers=world.admin.headers).get_json()]
    assert codes == ["B-01", "B-02", "B-09"]
    login = client.post("/api/auth/login", json={"username": "driver9", "password": "pw-9"})
    assert login.status_code == 200


def test_a_buggy_needs_a_driver_not_a_guest(client: FlaskClient, world: World) -> None:
    response = client.post(
        "/api/buggies",
        json={"code": "B-10", "driver_id": world.guest.id},
        headers=world.admin.headers,
    )
    assert response.status_code == 400
    assert response.get_json()["field"] == "driver_id"


def test_a_driver_drives_one_buggy(client: FlaskClient, world: World) -> None:
    response = client.post(
        "/api/buggies",
        json={"code": "B-11", "driver_id": world.driver.id},
        headers=world.admin.headers,
    )
    assert response.status_code == 409


def test_unknown_roles_and_duplicate_users_are_refused(client: FlaskClient, world: World) -> None:
    bad_role = client.post(
        "/api/users",
        json={"username": "x", "password": "y", "role": "root"},
        headers=world.admin.headers,
    )
    assert bad_role.status_code == 400
    duplicate = client.post(
        "/api/users",
        json={"username": "guest1", "password": "y", "role": "guest"},
        headers=world.admin.headers,
    )
    assert duplicate.status_code == 409


def test_fleet_endpoints_are_for_admins(client: FlaskClient, world: World) -> None:
    assert client.get("/api/buggies", headers=world.driver.headers).status_code == 403
    assert client.post("/api/users", json={}, headers=world.guest.headers).status_code == 403
