"""Every character, 4-byte ones included, in every text field, against the real server.

The session's database is created by the plugin with the server's default
character set (latin1 on a stock MariaDB started with ``--no-defaults``): the
tables must declare utf8mb4 themselves.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import String, Text, select, text

from reference_app.charset import CHARSET, COLLATION
from reference_app.extensions import db
from reference_app.models import (
    Buggy,
    GuestRequest,
    JobClaim,
    Location,
    Notification,
    SystemLog,
    User,
    utcnow,
)
from reference_app.services.notifications import DeliveryError, OutgoingNotification

from .support import World

# Each holds characters a latin1 or utf8mb3 column cannot store, or that a
# collation could confuse.
SAMPLES = {
    "bus emoji": "\U0001f68c Beach Club \U0001f3d6\ufe0f",
    "zwj sequence": "\U0001f469\U0001f3fd\u200d\U0001f692 night shift",  # woman firefighter
    "combining marks": "Cafe\u0301 Zoe\u0308 n\u0303",
    "astral letters": "\U0001d518\U0001d52b\U0001d526 \U0002070e\U00020731",  # Fraktur, CJK B
    "mixed scripts": "\u0645\u0631\u062d\u0628\u0627 \u6771\u4eac "  # Arabic, Japanese
    "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1",  # Greek
}
IDS = list(SAMPLES)


def fitted(value: str, length: int | None) -> str:
    return value if length is None else value[:length]


def text_columns(model: Any) -> list[tuple[str, int | None]]:
    return [
        (column.key, column.type.length)
        for column in model.__table__.columns
        if isinstance(column.type, String | Text)
    ]


def test_every_table_and_text_column_is_utf8mb4_on_the_server(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as connection:
        database = connection.execute(text("SELECT DATABASE()")).scalar_one()
        tables: dict[str, str] = dict(
            connection.execute(
                text(
                    "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = :db"
                ),
                {"db": database},
            ).all()
        )
        columns = connection.execute(
            text(
                "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = :db AND CHARACTER_SET_NAME IS NOT NULL"
            ),
            {"db": database},
        ).all()
    assert tables == dict.fromkeys(db.metadata.tables, COLLATION)
    expected = {
        (table.name, column.key)
        for table in db.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, String | Text)
    }
    assert {(table, column) for table, column, _ in columns} >= expected
    assert {charset for _, _, charset in columns} == {CHARSET}


@pytest.mark.parametrize("sample", list(SAMPLES.values()), ids=IDS)
def test_every_text_column_round_trips_and_compares(app: Flask, sample: str) -> None:
    """Write the sample into every String/Text column of every table, read it
    back from the server, and find each row by it (the comparison that was a 500)."""
    with app.app_context():
        session = db.session
        values: dict[Any, dict[str, str]] = {
            model: {key: fitted(sample, n) for key, n in text_columns(model)}
            for model in (User, Location, Buggy, GuestRequest, Notification, SystemLog, JobClaim)
        }
        user = User(**values[User])
        location = Location(**values[Location])
        session.add_all([user, location])
        session.flush()
        rows: list[Any] = [
            user,
            location,
            Buggy(**values[Buggy], driver_id=user.id, location_id=location.id),
            GuestRequest(**values[GuestRequest], guest_id=user.id, location_id=location.id),
            Notification(**values[Notification], user_id=user.id, payload={"note": sample}),
            SystemLog(**values[SystemLog]),
            JobClaim(**values[JobClaim], slot=1, claimed_at=utcnow()),
        ]
        session.add_all(rows)
        session.commit()
        session.expire_all()  # every read below goes to the server
        for row in rows:
            model = type(row)
            (key_column,) = [c for c in model.__table__.primary_key.columns if c.key != "slot"]
            key_value = getattr(row, key_column.key)
            fresh = session.get(model, [getattr(row, c.key) for c in model.__table__.primary_key])
            for key, value in values[model].items():
                assert getattr(fresh, key) == value, (model.__name__, key)
                found = session.scalars(
                    select(getattr(model, key_column.key)).where(getattr(model, key) == value)
                )
                assert key_value in found.all(), (model.__name__, key)
        notification = session.get(Notification, rows[4].id)
        assert notification is not None
        assert notification.payload == {"note": sample}


@pytest.mark.parametrize("sample", list(SAMPLES.values()), ids=IDS)
def test_the_api_keeps_every_character_of_users_locations_and_buggies(
    client: FlaskClient, world: World, sample: str
) -> None:
    admin = world.admin.headers
    username, password = fitted(f"{sample} guest", 80), f"{sample} pass"
    created = client.post(
        "/api/users",
        json={"username": username, "password": password, "role": "driver"},
        headers=admin,
    )
    assert created.status_code == 201, created.get_json()
    login = client.post("/api/auth/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.get_json()
    me = client.get("/api/me", headers={"Authorization": f"Bearer {login.get_json()['token']}"})
    assert me.get_json()["username"] == username

    name, description = fitted(f"{sample} stop", 120), f"{sample} — by the pier"
    location = client.post(
        "/api/locations", json={"name": name, "description": description}, headers=admin
    )
    assert location.status_code == 201, location.get_json()
    listed = {row["name"]: row for row in client.get("/api/locations").get_json()}
    assert listed[name]["description"] == description

    code = fitted(sample, 32)
    buggy = client.post(
        "/api/buggies", json={"code": code, "driver_id": created.get_json()["id"]}, headers=admin
    )
    assert buggy.status_code == 201, buggy.get_json()
    assert code in [row["code"] for row in client.get("/api/buggies", headers=admin).get_json()]


def test_names_that_differ_by_an_emoji_are_different_names(
    client: FlaskClient, world: World
) -> None:
    # utf8mb4_unicode_ci (UCA 4.0) weighs all of these the same: they would collide.
    for name in ("\U0001f68c Stop", "\U0001f695 Stop", "\U0001f6fa Stop"):
        response = client.post("/api/locations", json={"name": name}, headers=world.admin.headers)
        assert response.status_code == 201, (name, response.get_json())


def test_a_combining_spelling_of_an_existing_name_is_a_conflict_not_a_500(
    client: FlaskClient, world: World
) -> None:
    first = client.post("/api/locations", json={"name": "Caf\u00e9"}, headers=world.admin.headers)
    assert first.status_code == 201
    again = client.post("/api/locations", json={"name": "Cafe\u0301"}, headers=world.admin.headers)
    assert again.status_code == 409
    assert again.get_json()["error"] == "conflict"


@pytest.mark.parametrize("field", ["username", "password"])
def test_a_lone_surrogate_is_a_400_not_a_500(client: FlaskClient, world: World, field: str) -> None:
    body = {"username": "guest1", "password": "x"}
    raw = json.dumps(body).replace(f'"{body[field]}"', '"bad \\ud800 text"', 1)
    response = client.post("/api/auth/login", data=raw, content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] == field


ERROR_TEXT = "\U0001f4f5 push service said: nicht erreichbar \u2014 \u570f\u5916"


class EmojiFailingSender:
    def __init__(self) -> None:
        self.seen: list[OutgoingNotification] = []

    def send(self, message: OutgoingNotification) -> None:
        self.seen.append(message)
        raise DeliveryError(ERROR_TEXT)


def test_a_senders_error_text_and_a_payload_keep_every_character(
    make_app: Any, world: World
) -> None:
    from reference_app.jobs import run_job
    from reference_app.services.notifications import notify

    sender = EmojiFailingSender()
    app = make_app(NOTIFICATION_SENDER=sender)
    with app.app_context():
        notify(world.guest.id, "hello", {"note": SAMPLES["zwj sequence"]})
        db.session.commit()
    assert run_job(app, "retry_failed_notifications")["failed"] == 1
    client = app.test_client()
    (row,) = client.get("/api/notifications", headers=world.guest.headers).get_json()
    assert row["last_error"] == ERROR_TEXT
    assert row["payload"] == {"note": SAMPLES["zwj sequence"]}
    assert sender.seen[0].payload == {"note": SAMPLES["zwj sequence"]}
