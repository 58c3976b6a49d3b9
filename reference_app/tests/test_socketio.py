"""Socket.IO over real sockets: who may connect, who hears what, and the
driver-disconnect task that puts everything back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import socketio
from flask import Flask

from reference_app import shutdown_app
from reference_app.extensions import db
from reference_app.models import Buggy, GuestRequest, Notification
from reference_app.tasks import get_tasks

from .support import SocketClients, World, http, queue_pool, wait_until


def buggy(app: Flask, buggy_id: int) -> tuple[str, str | None]:
    with app.app_context():
        row = db.session.get(Buggy, buggy_id)
        assert row is not None
        return row.status, row.socket_sid


def request_row(app: Flask, request_id: int) -> tuple[str, int | None]:
    with app.app_context():
        row = db.session.get(GuestRequest, request_id)
        assert row is not None
        return row.status, row.driver_id


@pytest.mark.parametrize("auth", [None, {}, {"token": "forged"}, {"token": 42}, "a string"])
def test_unauthenticated_connections_are_refused(sockets: SocketClients, auth: object) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        sockets.connect(auth=auth)


def test_a_driver_without_a_buggy_is_refused(
    app: Flask, sockets: SocketClients, world: World
) -> None:
    with app.app_context():
        db.session.execute(db.update(Buggy).values(driver_id=None))
        db.session.commit()
    with pytest.raises(socketio.exceptions.ConnectionError):
        sockets.connect(world.driver.token)


def test_a_connected_driver_makes_the_buggy_available(
    app: Flask, sockets: SocketClients, world: World
) -> None:
    _, admin = sockets.connect(world.admin.token)
    client, _ = sockets.connect(world.driver.token)
    buggy_id = world.buggies[world.driver.id]
    assert buggy(app, buggy_id) == ("available", client.get_sid())
    update = admin.wait_for("buggy_status", lambda b: b["id"] == buggy_id)
    assert update["status"] == "available"


def test_guests_hear_about_their_own_request_only(
    served_app: str, sockets: SocketClients, world: World
) -> None:
    _, driver = sockets.connect(world.driver.token)
    _, mine = sockets.connect(world.guests[0].token)
    _, other = sockets.connect(world.guests[1].token)

    status, created = http(
        "POST",
        f"{served_app}/api/requests",
        {"location_id": world.locations[0]},
        world.guests[0].token,
    )
    assert status == 201
    assert driver.wait_for("request_created")["id"] == created["id"]

    status, _ = http(
        "POST", f"{served_app}/api/requests/{created['id']}/accept", None, world.driver.token
    )
    assert status == 200
    seen = mine.wait_for("request_updated", lambda r: r["status"] == "accepted")
    assert seen["driver_id"] == world.driver.id

    # The other guest's own request is a marker that their stream is flowing.
    http(
        "POST",
        f"{served_app}/api/requests",
        {"location_id": world.locations[1]},
        world.guests[1].token,
    )
    other.wait_for("request_created")
    assert [r["guest_id"] for r in other.named("request_updated")] == []
    assert [r["guest_id"] for r in other.named("request_created")] == [world.guests[1].id]


def test_location_updates(
    app: Flask, served_app: str, sockets: SocketClients, world: World
) -> None:
    driver_client, _ = sockets.connect(world.driver.token)
    _, guest = sockets.connect(world.guest.token)
    guest_client = sockets.clients[-1]
    _, created = http(
        "POST",
        f"{served_app}/api/requests",
        {"location_id": world.locations[0]},
        world.guest.token,
    )
    http("POST", f"{served_app}/api/requests/{created['id']}/accept", None, world.driver.token)

    ack = driver_client.call("location_update", {"location_id": world.locations[1]}, timeout=5)
    assert ack["ok"] is True
    assert ack["buggy"]["location_id"] == world.locations[1]
    moved = guest.wait_for("buggy_status", lambda b: b["location_id"] == world.locations[1])
    assert moved["id"] == world.buggies[world.driver.id]

    assert (
        driver_client.call("location_update", {"location_id": "x"}, timeout=5)["error"]
        == "validation_error"
    )
    assert (
        driver_client.call("location_update", {"location_id": 99999}, timeout=5)["error"]
        == "not_found"
    )
    assert driver_client.call("location_update", None, timeout=5)["error"] == "validation_error"
    assert (
        guest_client.call("location_update", {"location_id": 1}, timeout=5)["error"] == "forbidden"
    )
    with app.app_context():
        assert queue_pool().checkedout() == 0


def test_a_driver_disconnect_puts_everything_back(
    app: Flask, served_app: str, sockets: SocketClients, world: World
) -> None:
    _, admin = sockets.connect(world.admin.token)
    driver_client, _ = sockets.connect(world.driver.token)
    _, guest = sockets.connect(world.guest.token)
    _, created = http(
        "POST",
        f"{served_app}/api/requests",
        {"location_id": world.locations[0]},
        world.guest.token,
    )
    http("POST", f"{served_app}/api/requests/{created['id']}/accept", None, world.driver.token)
    assert request_row(app, created["id"]) == ("accepted", world.driver.id)

    driver_client.disconnect()
    offline = admin.wait_for("driver_offline")
    assert offline["driver_id"] == world.driver.id
    assert offline["requeued"] == [created["id"]]
    assert offline["pending_requests"] == 1
    guest.wait_for("request_updated", lambda r: r["status"] == "pending")

    assert buggy(app, world.buggies[world.driver.id]) == ("offline", None)
    assert request_row(app, created["id"]) == ("pending", None)
    with app.app_context():
        kinds = db.session.scalars(db.select(Notification.kind).order_by(Notification.id)).all()
    assert kinds == ["request_accepted", "request_requeued", "driver_offline"]
    wait_until(lambda: get_tasks(app).running == 0, message="the disconnect task to end")
    with app.app_context():
        assert queue_pool().checkedout() == 0  # the task gave its connection back


def test_an_old_socket_closing_does_not_take_a_reconnected_driver_offline(
    app: Flask, sockets: SocketClients, world: World
) -> None:
    _, admin = sockets.connect(world.admin.token)
    first, _ = sockets.connect(world.driver.token)
    second, _ = sockets.connect(world.driver.token)
    first.disconnect()
    wait_until(
        lambda: get_tasks(app).running == 0 and admin.named("buggy_status"),
        message="the first socket's disconnect task",
    )
    assert buggy(app, world.buggies[world.driver.id]) == ("available", second.get_sid())
    assert admin.named("driver_offline") == []


def test_shutdown_runs_the_disconnect_of_drivers_still_connected(
    app: Flask, sockets: SocketClients, world: World
) -> None:
    client, _ = sockets.connect(world.driver.token)
    shutdown_app(app)  # the server side closes the socket, then waits for the task
    assert buggy(app, world.buggies[world.driver.id])[0] == "offline"
    # Let the client finish handling the server's close: a client-side
    # disconnect() racing with it can stall python-engineio for 30 s.
    wait_until(lambda: client.eio.state == "disconnected", message="the client to see the close")


def test_a_hundred_clients_come_and_go(
    app: Flask, served_app: str, sockets: SocketClients, world: World
) -> None:
    """The seed's WebSocket stress check: 100 clients connect, then disconnect."""
    tokens = [world.guests[i % 2].token for i in range(98)] + [d.token for d in world.drivers]
    with ThreadPoolExecutor(max_workers=25) as pool:
        list(pool.map(sockets.connect, tokens))
    assert sum(client.connected for client in sockets.clients) == 100
    sockets.disconnect_all()
    wait_until(lambda: get_tasks(app).running == 0, message="the disconnect tasks")
    for driver in world.drivers:
        assert buggy(app, world.buggies[driver.id])[0] == "offline"
    with app.app_context():
        assert queue_pool().checkedout() == 0
    status, report = http("GET", f"{served_app}/db-pool-status")
    assert status == 200
    assert report["pool"]["checked_out"] <= 1
