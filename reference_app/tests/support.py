"""Test helpers: a small world of users, real Socket.IO clients, HTTP calls, waiting."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import socketio
from flask import Flask
from sqlalchemy.pool import QueuePool

from reference_app.auth import hash_password, issue_token
from reference_app.extensions import db
from reference_app.models import Buggy, Location, Role, User

PASSWORD = "correct horse battery"

AppFactory = Callable[..., Flask]


def queue_pool() -> QueuePool:
    """The current app's pool, typed: the seed's engine options make a QueuePool."""
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool


@dataclass(frozen=True)
class Actor:
    id: int
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class World:
    admin: Actor
    drivers: list[Actor]
    guests: list[Actor]
    locations: list[int]
    buggies: dict[int, int]  # driver id -> buggy id

    @property
    def driver(self) -> Actor:
        return self.drivers[0]

    @property
    def guest(self) -> Actor:
        return self.guests[0]


def add_user(username: str, role: Role) -> User:
    user = User(username=username, password_hash=hash_password(PASSWORD), role=role.value)
    db.session.add(user)
    return user


def build_world(app: Flask) -> World:
    with app.app_context():
        admin = add_user("admin", Role.ADMIN)
        drivers = [add_user(f"driver{i}", Role.DRIVER) for i in (1, 2)]
        guests = [add_user(f"guest{i}", Role.GUEST) for i in (1, 2)]
        locations = [Location(name="Main Lobby"), Location(name="Beach Club")]
        db.session.add_all(locations)
        db.session.flush()
        buggies = [Buggy(code=f"B-0{i}", driver_id=d.id) for i, d in enumerate(drivers, 1)]
        db.session.add_all(buggies)
        db.session.flush()

        def actor(user: User) -> Actor:
            return Actor(user.id, user.username, user.role, issue_token(user))

        world = World(
            admin=actor(admin),
            drivers=[actor(d) for d in drivers],
            guests=[actor(g) for g in guests],
            locations=[location.id for location in locations],
            buggies={buggy.driver_id: buggy.id for buggy in buggies if buggy.driver_id},
        )
        db.session.commit()
    return world


def set_buggy_status(app: Flask, buggy_id: int, status: str) -> None:
    with app.app_context():
        buggy = db.session.get(Buggy, buggy_id)
        assert buggy is not None
        buggy.status = status
        db.session.commit()


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition"
) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One HTTP call on a real socket, closed afterwards; (status, JSON body)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


class Recorder:
    """The events one client received, in order; awaitable without sleeping."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = threading.Condition()

    def add(self, event: str, *args: Any) -> None:
        with self._changed:
            self.events.append((event, args[0] if args else None))
            self._changed.notify_all()

    def named(self, event: str) -> list[Any]:
        with self._changed:
            return [data for name, data in self.events if name == event]

    def wait_for(
        self, event: str, where: Callable[[Any], bool] = lambda data: True, timeout: float = 5.0
    ) -> Any:
        def match() -> Any:
            return next((d for n, d in self.events if n == event and where(d)), None)

        with self._changed:
            found = self._changed.wait_for(lambda: match() is not None, timeout=timeout)
            if not found:
                raise AssertionError(f"no {event!r} event matched; got {self.events!r}")
            return match()


@dataclass
class SocketClients:
    """Connects real clients over WebSocket and disconnects them all at the end."""

    base_url: str
    clients: list[socketio.Client] = field(default_factory=list)

    def connect(
        self, token: str | None = None, *, auth: Any = ...
    ) -> tuple[socketio.Client, Recorder]:
        client = socketio.Client(reconnection=False)
        recorder = Recorder()
        client.on("*", recorder.add)
        payload = {"token": token} if auth is ... else auth
        client.connect(self.base_url, auth=payload, transports=["websocket"], wait_timeout=10)
        self.clients.append(client)
        return client, recorder

    def disconnect_all(self) -> None:
        connected = [client for client in self.clients if client.connected]
        if connected:
            with ThreadPoolExecutor(max_workers=min(len(connected), 32)) as pool:
                list(pool.map(lambda client: client.disconnect(), connected))
        self.clients.clear()
