"""Socket.IO churn: 100 drivers connect with their real tokens, report a
location and disconnect, so that ``_handle_driver_disconnect_async`` runs for
each one (buggy offline, accepted requests back to pending, admins told) --
the seed's WebSocket stress check, with every disconnect doing its work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import socketio
from flask import Flask
from sqlalchemy import func, insert, select

from reference_app.auth import issue_token
from reference_app.extensions import db
from reference_app.extensions import socketio as app_socketio
from reference_app.models import (
    Buggy,
    GuestRequest,
    Location,
    Notification,
    RequestStatus,
    Role,
    SystemLog,
    User,
    utcnow,
)
from reference_app.tasks import get_tasks

from .conftest import PoolFacts, app_session

CLIENTS = 100
SERVING = 20  # drivers that are serving a guest's request when they go


class Fleet:
    """100 drivers, each with a buggy; the first 20 hold an accepted request."""

    def __init__(self, app: Flask) -> None:
        now = utcnow()
        with app_session(app):
            db.session.execute(
                insert(User),
                [{"username": "admin", "password_hash": "x", "role": Role.ADMIN.value}]
                + [
                    {"username": f"driver{i:03d}", "password_hash": "x", "role": Role.DRIVER.value}
                    for i in range(CLIENTS)
                ]
                + [
                    {"username": f"guest{i:03d}", "password_hash": "x", "role": Role.GUEST.value}
                    for i in range(SERVING)
                ],
            )
            users = db.session.scalars(select(User).order_by(User.id)).all()
            drivers = [u for u in users if u.role == Role.DRIVER.value]
            guests = [u for u in users if u.role == Role.GUEST.value]
            location = Location(name="Main Lobby")
            db.session.add(location)
            db.session.flush()
            db.session.execute(
                insert(Buggy),
                [{"code": f"B-{i:03d}", "driver_id": d.id} for i, d in enumerate(drivers)],
            )
            rows = db.session.execute(select(Buggy.driver_id, Buggy.id))
            buggies = {driver_id: buggy_id for driver_id, buggy_id in rows}
            db.session.execute(
                insert(GuestRequest),
                [
                    {
                        "guest_id": guest.id,
                        "location_id": location.id,
                        "status": RequestStatus.ACCEPTED.value,
                        "driver_id": driver.id,
                        "buggy_id": buggies[driver.id],
                        "accepted_at": now,
                    }
                    for guest, driver in zip(guests, drivers, strict=False)
                ],
            )
            self.location_id = location.id
            self.tokens = [issue_token(driver) for driver in drivers]
            db.session.commit()
        self._tokens = iter(self.tokens)
        self._lock = threading.Lock()

    def next_auth(self) -> dict[str, str]:
        """python-socketio calls a callable ``auth`` on each connect: one driver per client."""
        with self._lock:
            return {"token": next(self._tokens)}


@pytest.mark.dbleak_socket_churn(clients=CLIENTS, concurrency=10, timeout=30)
def test_a_hundred_drivers_come_and_go(
    app: Flask,
    dbleak_socket_churn: Any,
    pool_facts: Callable[[], PoolFacts],
) -> None:
    fleet = Fleet(app)
    acks: list[Any] = []
    acks_lock = threading.Lock()

    def report_location(client: socketio.Client) -> None:
        ack = client.call("location_update", {"location_id": fleet.location_id}, timeout=10)
        with acks_lock:
            acks.append(ack)

    result = dbleak_socket_churn.run(
        app, app_socketio, auth=fleet.next_auth, on_connect=report_location
    )

    assert result.runs == CLIENTS
    assert result.disconnects == CLIENTS
    assert result.server_tasks >= CLIENTS  # one disconnect task per driver, at least
    assert len(acks) == CLIENTS
    assert all(ack.get("ok") for ack in acks), acks[:3]
    assert get_tasks(app).running == 0
    with app_session(app):
        buggies = dict(
            db.session.execute(select(Buggy.status, func.count()).group_by(Buggy.status)).all()
        )
        requests = dict(
            db.session.execute(
                select(GuestRequest.status, func.count()).group_by(GuestRequest.status)
            ).all()
        )
        kinds = dict(
            db.session.execute(
                select(Notification.kind, func.count()).group_by(Notification.kind)
            ).all()
        )
        offline_logs = db.session.scalar(
            select(func.count()).select_from(SystemLog).where(SystemLog.source == "fleet")
        )
        locations = set(db.session.scalars(select(Buggy.location_id)))
    assert buggies == {"offline": CLIENTS}
    assert requests == {"pending": SERVING}  # back in the queue
    assert kinds == {"driver_offline": CLIENTS, "request_requeued": SERVING}
    assert offline_logs == CLIENTS
    assert locations == {fleet.location_id}

    facts = pool_facts()
    assert facts.checked_out == 0, facts
    assert facts.status == "healthy", facts
    assert facts.server_connections <= facts.ceiling, facts
