"""Guest requests: create, follow, accept, complete, cancel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from reference_app.extensions import db
from reference_app.models import Buggy, Notification

from .support import World, http, set_buggy_status


def create(client: FlaskClient, world: World, guest: int = 0, location: int = 0) -> dict[str, Any]:
    response = client.post(
        "/api/requests",
        json={"location_id": world.locations[location]},
        headers=world.guests[guest].headers,
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def online(app: Flask, world: World, driver: int = 0) -> None:
    set_buggy_status(app, world.buggies[world.drivers[driver].id], "available")


def buggy_status(app: Flask, buggy_id: int) -> str:
    with app.app_context():
        buggy = db.session.get(Buggy, buggy_id)
        assert buggy is not None
        return buggy.status


def test_a_guest_calls_a_buggy(client: FlaskClient, world: World) -> None:
    request = create(client, world)
    assert request["status"] == "pending"
    assert request["guest_id"] == world.guest.id
    fetched = client.get(f"/api/requests/{request['id']}", headers=world.guest.headers)
    assert fetched.get_json()["id"] == request["id"]


def test_one_open_request_per_guest(client: FlaskClient, world: World) -> None:
    create(client, world)
    again = client.post(
        "/api/requests", json={"location_id": world.locations[1]}, headers=world.guest.headers
    )
    assert again.status_code == 409


@pytest.mark.parametrize("location_id", ["1", True, -1, 0, None, 2**40, [1]])
def test_a_bad_location_id_is_400(client: FlaskClient, world: World, location_id: Any) -> None:
    response = client.post(
        "/api/requests", json={"location_id": location_id}, headers=world.guest.headers
    )
    assert response.status_code == 400
    assert response.get_json()["field"] == "location_id"


def test_an_unknown_location_is_404(client: FlaskClient, world: World) -> None:
    response = client.post(
        "/api/requests", json={"location_id": 999999}, headers=world.guest.headers
    )
    assert response.status_code == 404


def test_only_guests_create_requests(client: FlaskClient, world: World) -> None:
    body = {"location_id": world.locations[0]}
    assert client.post("/api/requests", json=body, headers=world.driver.headers).status_code == 403
    assert client.post("/api/requests", json=body).status_code == 401


def test_the_full_ride(app: Flask, client: FlaskClient, world: World) -> None:
    request = create(client, world)
    online(app, world)
    accepted = client.post(f"/api/requests/{request['id']}/accept", headers=world.driver.headers)
    assert accepted.status_code == 200
    assert accepted.get_json()["driver_id"] == world.driver.id
    assert buggy_status(app, world.buggies[world.driver.id]) == "busy"

    completed = client.post(f"/api/requests/{request['id']}/complete", headers=world.driver.headers)
    assert completed.get_json()["status"] == "completed"
    assert buggy_status(app, world.buggies[world.driver.id]) == "available"

    kinds = [
        n["kind"] for n in client.get("/api/notifications", headers=world.guest.headers).get_json()
    ]
    assert kinds == ["request_completed", "request_accepted"]


def test_an_offline_driver_cannot_accept(client: FlaskClient, world: World) -> None:
    request = create(client, world)
    response = client.post(f"/api/requests/{request['id']}/accept", headers=world.driver.headers)
    assert response.status_code == 409
    assert "offline" in response.get_json()["message"]


def test_a_busy_driver_cannot_accept_another(app: Flask, client: FlaskClient, world: World) -> None:
    first, second = create(client, world, guest=0), create(client, world, guest=1)
    online(app, world)
    assert (
        client.post(f"/api/requests/{first['id']}/accept", headers=world.driver.headers).status_code
        == 200
    )
    response = client.post(f"/api/requests/{second['id']}/accept", headers=world.driver.headers)
    assert response.status_code == 409


def test_only_the_serving_driver_completes(app: Flask, client: FlaskClient, world: World) -> None:
    request = create(client, world)
    online(app, world)
    client.post(f"/api/requests/{request['id']}/accept", headers=world.driver.headers)
    other = world.drivers[1]
    response = client.post(f"/api/requests/{request['id']}/complete", headers=other.headers)
    assert response.status_code == 403


def test_a_pending_request_cannot_be_completed(client: FlaskClient, world: World) -> None:
    request = create(client, world)
    response = client.post(f"/api/requests/{request['id']}/complete", headers=world.driver.headers)
    assert response.status_code == 403  # nobody serves it yet


def test_the_guest_cancels_and_the_buggy_is_freed(
    app: Flask, client: FlaskClient, world: World
) -> None:
    request = create(client, world)
    online(app, world)
    client.post(f"/api/requests/{request['id']}/accept", headers=world.driver.headers)
    cancelled = client.post(f"/api/requests/{request['id']}/cancel", headers=world.guest.headers)
    assert cancelled.get_json()["status"] == "cancelled"
    assert buggy_status(app, world.buggies[world.driver.id]) == "available"
    again = client.post(f"/api/requests/{request['id']}/cancel", headers=world.guest.headers)
    assert again.status_code == 409


def test_another_guest_can_neither_see_nor_cancel(client: FlaskClient, world: World) -> None:
    request = create(client, world)
    stranger = world.guests[1]
    assert client.get(f"/api/requests/{request['id']}", headers=stranger.headers).status_code == 404
    response = client.post(f"/api/requests/{request['id']}/cancel", headers=stranger.headers)
    assert response.status_code == 404


def test_a_driver_cannot_cancel_but_an_admin_can(
    app: Flask, client: FlaskClient, world: World
) -> None:
    request = create(client, world)
    assert (
        client.post(
            f"/api/requests/{request['id']}/cancel", headers=world.driver.headers
        ).status_code
        == 403
    )
    response = client.post(f"/api/requests/{request['id']}/cancel", headers=world.admin.headers)
    assert response.status_code == 200
    with app.app_context():
        kinds = db.session.scalars(db.select(Notification.kind)).all()
    assert kinds == ["request_cancelled"]  # the guest hears that an admin cancelled


def test_listing_is_scoped_to_the_caller(app: Flask, client: FlaskClient, world: World) -> None:
    mine, theirs = create(client, world, guest=0), create(client, world, guest=1)

    def ids(actor):
        return {r["id"] for r in client.get("/api/requests", headers=actor.headers).get_json()}

    assert ids(world.guests[0]) == {mine["id"]}
    assert ids(world.admin) == {mine["id"], theirs["id"]}
    assert ids(world.driver) == {mine["id"], theirs["id"]}  # pending ones are open to drivers
    online(app, world)
    client.post(f"/api/requests/{mine['id']}/accept", headers=world.driver.headers)
    assert ids(world.drivers[1]) == {theirs["id"]}


@pytest.mark.parametrize("path", ["/api/requests/999999", "/api/requests/abc"])
def test_unknown_requests_are_404_json(client: FlaskClient, world: World, path: str) -> None:
    response = client.get(path, headers=world.admin.headers)
    assert response.status_code == 404
    assert response.is_json


def test_two_drivers_race_for_one_request(app: Flask, served_app: str, world: World) -> None:
    """Row locks on a real server: exactly one of two concurrent accepts wins."""
    status, request = http(
        "POST",
        f"{served_app}/api/requests",
        {"location_id": world.locations[0]},
        world.guest.token,
    )
    assert status == 201
    for index in range(2):
        online(app, world, driver=index)
    url = f"{served_app}/api/requests/{request['id']}/accept"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda d: http("POST", url, None, d.token), world.drivers))
    assert sorted(status for status, _ in results) == [200, 409]
    winner = next(body for status, body in results if status == 200)
    busy = [buggy_status(app, world.buggies[d.id]) for d in world.drivers]
    assert busy.count("busy") == 1
    assert winner["buggy_id"] == world.buggies[winner["driver_id"]]
