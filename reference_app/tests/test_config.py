"""Config classes, DATABASE_URL handling and the factory's refusals."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from reference_app import create_app
from reference_app.config import (
    SEED_ENGINE_OPTIONS,
    Config,
    ConfigError,
    DevelopmentConfig,
    ProductionConfig,
    config_from_env,
    engine_options_for,
)
from reference_app.extensions import db

from .config import TestingConfig
from .support import queue_pool

SEED = {
    "pool_size": 20,
    "pool_recycle": 3600,
    "pool_pre_ping": True,
    "max_overflow": 40,
    "pool_timeout": 30,
    "pool_reset_on_return": "rollback",
}


@pytest.mark.parametrize("cls", [Config, DevelopmentConfig, TestingConfig, ProductionConfig])
def test_every_config_class_has_the_seeds_engine_options(cls: type[Config]) -> None:
    assert SEED.items() <= cls.SQLALCHEMY_ENGINE_OPTIONS.items()


def test_the_app_engine_uses_the_seeds_pool(app: Flask) -> None:
    with app.app_context():
        pool = queue_pool()
        assert (pool.size(), pool._max_overflow, pool._timeout) == (20, 40, 30)
        assert pool._recycle == 3600
        assert pool._pre_ping is True


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://u:p@127.0.0.1:3306/db",
        "mysql+pymysql://u:p@localhost/db",
        "mysql+pymysql://u:p@/db?unix_socket=/run/mysqld/mysqld.sock",
    ],
)
def test_local_pymysql_urls_get_ssl_disabled(url: str) -> None:
    options = engine_options_for(make_url(url))
    assert options["connect_args"] == {"ssl_disabled": True, "charset": "utf8mb4"}
    assert "connect_args" not in SEED_ENGINE_OPTIONS  # the shared defaults stay untouched


@pytest.mark.parametrize(
    "url",
    ["mysql+pymysql://u:p@db.example.com/db", "sqlite:///x.db", "mysql+mysqldb://u@127.0.0.1/db"],
)
def test_remote_or_other_driver_urls_keep_ssl(url: str) -> None:
    assert "ssl_disabled" not in engine_options_for(make_url(url)).get("connect_args", {})


@pytest.mark.parametrize(
    ("url", "connect_args"),
    [
        ("mysql+pymysql://u@db.example.com/db", {"charset": "utf8mb4"}),
        ("mysql+mysqldb://u@127.0.0.1/db", {"charset": "utf8mb4"}),
        ("mariadb+pymysql://u@db.example.com/db", {"charset": "utf8mb4"}),
        ("mysql+pymysql://u@db.example.com/db?charset=utf8", None),  # the URL's own choice
        ("sqlite:///x.db", None),
    ],
)
def test_mysql_connections_ask_for_utf8mb4(url: str, connect_args: object) -> None:
    assert engine_options_for(make_url(url)).get("connect_args") == connect_args


def test_local_connections_really_skip_tls(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as connection:
        cipher = connection.exec_driver_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'").one()[1]
    assert cipher == ""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "DATABASE_URL is not set"),
        ("", "DATABASE_URL is not set"),
        ("not a url", "not a valid SQLAlchemy URL"),
        ("nosuchdriver://u@127.0.0.1/db", "DATABASE_URL cannot be used"),
    ],
)
def test_bad_database_urls_are_one_line_config_errors(
    monkeypatch: pytest.MonkeyPatch, url: str | None, message: str
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "x"})
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_environment_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql+pymysql://u@127.0.0.1/db")
    monkeypatch.setenv("SOCKETIO_MESSAGE_QUEUE", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SOCKETIO_CHANNEL", "chan-1")
    monkeypatch.setenv("SCHEDULER_ENABLED", "yes")
    monkeypatch.setenv("REFERENCE_APP_CONFIG", "development")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings: dict[str, Any] = config_from_env()
    assert settings["SQLALCHEMY_DATABASE_URI"] == "mysql+pymysql://u@127.0.0.1/db"
    assert settings["SOCKETIO_MESSAGE_QUEUE"] == "redis://127.0.0.1:6379/0"
    assert settings["SOCKETIO_CHANNEL"] == "chan-1"
    assert settings["SCHEDULER_ENABLED"] is True
    assert len(settings["SECRET_KEY"]) >= 32  # a random one in development


def test_the_environment_chooses_the_password_hash_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFERENCE_APP_CONFIG", "production")
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    assert config_from_env()["PASSWORD_HASH_METHOD"] == "scrypt"
    monkeypatch.setenv("PASSWORD_HASH_METHOD", "pbkdf2:sha256:600000")
    assert config_from_env()["PASSWORD_HASH_METHOD"] == "pbkdf2:sha256:600000"


def test_production_needs_a_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERENCE_APP_CONFIG", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY must be set"):
        config_from_env()


@pytest.mark.parametrize("name", ["staging", "testing"])  # the tests' config is theirs
def test_unknown_config_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("REFERENCE_APP_CONFIG", name)
    with pytest.raises(ConfigError, match="development, production"):
        config_from_env()


def test_the_environment_sets_job_intervals_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_INTERVALS", " retry_failed_notifications=0.5 , cleanup_old_logs=600")
    monkeypatch.setenv("NOTIFICATION_BATCH_SIZE", "10")
    monkeypatch.setenv("NOTIFICATION_CLAIM_SECONDS", "2.5")
    monkeypatch.setenv("SERVER_PROCESSES", "4")
    monkeypatch.setenv("NOTIFICATION_SENDER", "reference_app.tests.senders:BrokenSender")
    settings = config_from_env()
    assert settings["JOB_INTERVALS_SECONDS"] == {
        **Config.JOB_INTERVALS_SECONDS,
        "retry_failed_notifications": 0.5,
        "cleanup_old_logs": 600.0,
    }
    assert settings["NOTIFICATION_BATCH_SIZE"] == 10
    assert settings["NOTIFICATION_CLAIM_SECONDS"] == 2.5
    assert settings["SERVER_PROCESSES"] == 4
    assert settings["NOTIFICATION_SENDER"] == "reference_app.tests.senders:BrokenSender"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JOB_INTERVALS", "nope=1", "JOB_INTERVALS: unknown job 'nope'; jobs: retry_failed"),
        ("JOB_INTERVALS", "cleanup_old_logs=soon", "JOB_INTERVALS cleanup_old_logs='soon' is not"),
        ("JOB_INTERVALS", "cleanup_old_logs=-1", "must be positive"),
        ("SERVER_PROCESSES", "four", "SERVER_PROCESSES='four' is not a int"),
        ("SERVER_PROCESSES", "0", "SERVER_PROCESSES='0' must be positive"),
    ],
)
def test_bad_numbers_in_the_environment_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        config_from_env()
    assert message in caught.value.message
