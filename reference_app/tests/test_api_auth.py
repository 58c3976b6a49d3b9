"""Login and bearer tokens."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from .support import PASSWORD, AppFactory, World


def test_login_returns_a_token_and_the_user(client: FlaskClient, world: World) -> None:
    response = client.post("/api/auth/login", json={"username": "guest1", "password": PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["user"] == {"id": world.guest.id, "username": "guest1", "role": "guest"}
    me = client.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.get_json()["username"] == "guest1"


def test_a_driver_sees_their_buggy(client: FlaskClient, world: World) -> None:
    me = client.get("/api/me", headers=world.driver.headers).get_json()
    assert me["buggy"]["id"] == world.buggies[world.driver.id]


@pytest.mark.parametrize(
    "body",
    [
        {"username": "guest1", "password": "wrong"},
        {"username": "nobody", "password": PASSWORD},
    ],
)
def test_wrong_credentials_are_401(client: FlaskClient, world: World, body: dict) -> None:
    response = client.post("/api/auth/login", json=body)
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized", "message": "wrong username or password"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "guest1"},
        {"username": "", "password": "x"},
        {"username": 5, "password": "x"},
    ],
)
def test_missing_or_malformed_fields_are_400(client: FlaskClient, world: World, body: dict) -> None:
    response = client.post("/api/auth/login", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "validation_error"


def test_passwords_are_stored_hashed(app: Flask, world: World) -> None:
    from reference_app.extensions import db
    from reference_app.models import User

    with app.app_context():
        stored = db.session.get(User, world.guest.id).password_hash  # type: ignore[union-attr]
    assert PASSWORD not in stored
    assert stored.startswith("pbkdf2:")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer nonsense", "Basic abc", "Bearer {token}x"],
)
def test_missing_or_forged_tokens_are_401(
    client: FlaskClient, world: World, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=world.guest.token)}
    response = client.get("/api/me", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


def test_a_token_signed_with_another_key_is_rejected(make_app: AppFactory, world: World) -> None:
    other = make_app(SECRET_KEY="another-key")
    response = other.test_client().get("/api/me", headers=world.guest.headers)
    assert response.status_code == 401


def test_expired_tokens_are_rejected(make_app: AppFactory, world: World) -> None:
    strict = make_app(TOKEN_MAX_AGE_SECONDS=-1)
    assert strict.test_client().get("/api/me", headers=world.guest.headers).status_code == 401
