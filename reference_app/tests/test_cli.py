"""The commands, run as a user runs them, in child processes."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import inspect

from reference_app.demo import BUGGIES, LOCATIONS, PASSWORD_ENV
from reference_app.extensions import db
from reference_app.jobs import JOBS

from .processes import flask

UNREACHABLE = "mysql+pymysql://nobody@127.0.0.1:1/nothing"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_init_db_creates_the_schema(app: Flask, dbleak_mysql_url: str) -> None:
    with app.app_context():
        db.drop_all()
    try:
        result = flask(dbleak_mysql_url, "init-db")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "schema created"
        with app.app_context():
            tables = set(inspect(db.engine).get_table_names())
        assert tables == set(db.metadata.tables)
    finally:
        with app.app_context():
            db.create_all()


def test_init_db_demo(client: FlaskClient, dbleak_mysql_url: str) -> None:
    result = flask(dbleak_mysql_url, "init-db", "--demo", **{PASSWORD_ENV: "s3cret-demo"})
    assert result.returncode == 0, result.stderr
    assert '"users": 3' in result.stdout
    assert len(client.get("/api/locations").get_json()) == len(LOCATIONS)
    for username in ("admin", "driver1", "guest1"):
        login = client.post(
            "/api/auth/login", json={"username": username, "password": "s3cret-demo"}
        )
        assert login.status_code == 200, username
    token = client.post(
        "/api/auth/login", json={"username": "admin", "password": "s3cret-demo"}
    ).get_json()["token"]
    buggies = client.get("/api/buggies", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [b["code"] for b in buggies] == list(BUGGIES)
    assert buggies[0]["driver_id"] is not None

    again = flask(dbleak_mysql_url, "init-db", "--demo", **{PASSWORD_ENV: "other"})
    assert again.returncode == 0
    assert '{"locations": 0, "buggies": 0, "users": 0}' in again.stdout


def test_demo_without_a_password_is_refused(client: FlaskClient, dbleak_mysql_url: str) -> None:
    result = flask(dbleak_mysql_url, "init-db", "--demo", **{PASSWORD_ENV: ""})
    assert result.returncode != 0
    assert one_error_line(result.stderr) == (
        f"Error: --demo needs the demo users' password in {PASSWORD_ENV}"
    )
    assert client.get("/api/locations").get_json() == []


@pytest.mark.parametrize("name", list(JOBS))
def test_jobs_run(app: Flask, dbleak_mysql_url: str, name: str) -> None:
    result = flask(dbleak_mysql_url, "jobs", "run", name)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job"] == name
    assert f"reference_app.jobs: {name}: Session cleaned up successfully" in result.stderr


def test_an_unknown_job_lists_the_jobs(dbleak_mysql_url: str) -> None:
    result = flask(dbleak_mysql_url, "jobs", "run", "nope")
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert line.startswith("Error: unknown job 'nope'")
    assert all(name in line for name in JOBS)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "Error: DATABASE_URL is not set"),
        ("not a url at all", "Error: DATABASE_URL is not a valid SQLAlchemy URL"),
        ("nosuchdriver://x@127.0.0.1/db", "Error: DATABASE_URL cannot be used"),
        (UNREACHABLE, "Error: database error: (2003"),
        ("{session}_nosuchdb", "Error: database error: (104"),  # 1044 or 1049
    ],
)
def test_a_bad_database_url_is_one_clear_line(
    dbleak_mysql_url: str, url: str, message: str
) -> None:
    result = flask(url.format(session=dbleak_mysql_url.split("?")[0]), "init-db")
    assert result.returncode != 0
    assert one_error_line(result.stderr).startswith(message)


def test_a_job_against_an_unreachable_server_has_no_traceback() -> None:
    result = flask(UNREACHABLE, "jobs", "run", "cleanup_old_logs")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: database error: (2003")
