"""The commands, run as a user runs them, in child processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

from reference_app.charset import CHARSET, COLLATION
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


@pytest.fixture
def admin_database(dbleak_server: Any) -> Iterator[tuple[str, Callable[[str], Any]]]:
    """A database name of its own on the session's server, reached as the server's
    admin (who may create databases), and a query helper; dropped afterwards."""
    name = f"refapp_init_{uuid.uuid4().hex[:8]}"
    url = make_url(dbleak_server.admin_url).set(drivername="mysql+pymysql", database=name)
    engine = create_engine(url.set(database=""), poolclass=NullPool)  # the server, no database

    def query(sql: str) -> Any:
        with engine.begin() as connection:
            result = connection.execute(text(sql))
            return result.all() if result.returns_rows else None

    try:
        yield url.render_as_string(hide_password=False), query
    finally:
        query(f"DROP DATABASE IF EXISTS `{name}`")
        engine.dispose()


def test_init_db_creates_a_missing_database_as_utf8mb4(
    admin_database: tuple[str, Callable[[str], Any]],
) -> None:
    url, query = admin_database
    name = make_url(url).database
    result = flask(url, "init-db")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"database {name} created ({CHARSET}, {COLLATION})",
        "schema created",
    ]
    assert query(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
        f"information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'"
    ) == [(CHARSET, COLLATION)]
    # A second run finds it as it should be: nothing to say.
    again = flask(url, "init-db")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema created"
    assert "warning" not in again.stderr


def test_init_db_says_when_an_existing_database_is_not_utf8mb4(
    admin_database: tuple[str, Callable[[str], Any]],
) -> None:
    url, query = admin_database
    name = make_url(url).database
    query(f"CREATE DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    query(f"CREATE TABLE `{name}`.legacy (note VARCHAR(10)) CHARACTER SET latin1")
    result = flask(url, "init-db", "--demo", **{PASSWORD_ENV: "s3cret-demo"})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: database {name} has the default character set latin1 (latin1_swedish_ci), "
        f"not {CHARSET}: the app's tables declare {CHARSET} themselves; to change the default: "
        f"ALTER DATABASE `{name}` CHARACTER SET {CHARSET} COLLATE {COLLATION}",
        f"warning: table legacy is latin1_swedish_ci, not {CHARSET}: ALTER TABLE `legacy` "
        f"CONVERT TO CHARACTER SET {CHARSET} COLLATE {COLLATION}",
    ]
    collations = query(
        "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA = '{name}' AND TABLE_NAME <> 'legacy'"
    )
    assert dict(collations) == dict.fromkeys(db.metadata.tables, COLLATION)
    # The app's tables take a 4-byte character although the database default is latin1.
    query(
        f"INSERT INTO `{name}`.locations (name, description, created_at) "
        "VALUES ('\U0001f68c Stop', '', NOW())"
    )
    assert query(f"SELECT name FROM `{name}`.locations WHERE name = '\U0001f68c Stop'") == [
        ("\U0001f68c Stop",)
    ]
