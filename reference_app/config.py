"""Configuration classes and the engine options derived from ``DATABASE_URL``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

import click
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .charset import CHARSET

# The seed's pool settings. pool_size + max_overflow = 60 connections per
# process: the monitor compares that ceiling with the server's max_connections.
SEED_ENGINE_OPTIONS: dict[str, Any] = {
    "pool_size": 20,
    "pool_recycle": 3600,
    "pool_pre_ping": True,
    "max_overflow": 40,
    "pool_timeout": 30,
    "echo_pool": False,
    "pool_reset_on_return": "rollback",
}

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_TRUE = frozenset({"1", "true", "yes", "on"})


class ConfigError(click.ClickException):
    """A configuration problem reported as one line.

    It subclasses ClickException because Flask's CLI only turns click errors
    raised by the app factory into a one-line ``Error: ...``; anything else
    becomes a traceback.
    """


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in _TRUE


def parse_database_url(raw: str | None) -> URL:
    if raw is None or not raw.strip():
        raise ConfigError("DATABASE_URL is not set (e.g. mysql+pymysql://user:pw@127.0.0.1/db)")
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a valid SQLAlchemy URL") from None
    if not url.drivername:
        raise ConfigError("DATABASE_URL has no driver name")
    return url


def engine_options_for(url: URL, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Copy the engine options and add what this URL needs.

    PyMySQL 1.2 builds an SSL context on every connect unless told not to
    (~19 ms per connection); a server on this host does not need TLS.
    """
    options = dict(SEED_ENGINE_OPTIONS if base is None else base)
    connect_args = dict(options.get("connect_args", {}))
    if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
        # Every character, 4-byte ones included, whatever the driver's default.
        connect_args.setdefault("charset", CHARSET)
    if url.drivername == "mysql+pymysql" and _is_local(url):
        connect_args.setdefault("ssl_disabled", True)
    if connect_args:
        options["connect_args"] = connect_args
    return options


def _is_local(url: URL) -> bool:
    return url.host in _LOCAL_HOSTS or (url.host is None and "unix_socket" in url.query)


class Config:
    """Defaults shared by every environment."""

    SECRET_KEY: str | None = None
    SQLALCHEMY_DATABASE_URI: str | None = None
    SQLALCHEMY_ENGINE_OPTIONS: ClassVar[dict[str, Any]] = SEED_ENGINE_OPTIONS
    SQLALCHEMY_TRACK_MODIFICATIONS = False

    LOG_LEVEL = "INFO"
    PASSWORD_HASH_METHOD = "scrypt"
    TOKEN_MAX_AGE_SECONDS = 12 * 3600

    SOCKETIO_MESSAGE_QUEUE: str | None = None
    SOCKETIO_CHANNEL = "reference-app"

    SCHEDULER_ENABLED = False
    JOB_INTERVALS_SECONDS: ClassVar[dict[str, float]] = {
        "retry_failed_notifications": 60,
        "mark_permanently_failed": 300,
        "cleanup_old_logs": 3600,
        "check_request_timeouts": 30,
    }

    # Import path ("module:attr") of the notification sender class.
    NOTIFICATION_SENDER = "reference_app.services.notifications:LoggingSender"
    NOTIFICATION_MAX_ATTEMPTS = 5
    NOTIFICATION_RETRY_BASE_SECONDS = 30
    NOTIFICATION_BATCH_SIZE = 100
    # A claimed notification is another process's for this long: a send that
    # takes longer counts as crashed, and the row is due again.
    NOTIFICATION_CLAIM_SECONDS = 300.0

    REQUEST_TIMEOUT_SECONDS = 15 * 60
    SYSTEM_LOG_RETENTION_DAYS = 30

    # How many server processes (workers x hosts) share the database: the
    # monitor warns when that many pool ceilings exceed max_connections.
    SERVER_PROCESSES = 1

    # Alarm criteria of the seed, as numbers.
    POOL_WARNING_USAGE = 0.80
    POOL_CRITICAL_USAGE = 0.95
    POOL_OVERFLOW_CRITICAL_SECONDS = 300.0
    POOL_ALARM_WINDOW_SECONDS = 900.0

    # Background tasks still running at shutdown get this long to finish.
    SHUTDOWN_TASK_TIMEOUT_SECONDS = 10.0

    # Without a SECRET_KEY, sign tokens with a random key of this process (tokens then
    # last as long as the process and are valid in it alone): only for local work.
    RANDOM_SECRET_KEY = False


class DevelopmentConfig(Config):
    """Local work: a random SECRET_KEY unless one is set."""

    RANDOM_SECRET_KEY = True


class ProductionConfig(Config):
    """SECRET_KEY must come from the environment."""

    RANDOM_SECRET_KEY = False


# What REFERENCE_APP_CONFIG chooses from. Tests build their own configuration
# (reference_app/tests/config.py): nothing of theirs is selectable here.
CONFIG_CLASSES: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "production": ProductionConfig,
}


def config_from_env() -> dict[str, Any]:
    """Settings that the environment provides, for ``create_app(None)``."""
    name = os.environ.get("REFERENCE_APP_CONFIG", "development").strip().lower()
    try:
        base = CONFIG_CLASSES[name]
    except KeyError:
        names = ", ".join(CONFIG_CLASSES)
        raise ConfigError(
            f"REFERENCE_APP_CONFIG={name!r} is unknown; use one of: {names}"
        ) from None
    settings = _class_settings(base)
    settings["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL")
    secret = os.environ.get("SECRET_KEY")
    if secret:
        settings["SECRET_KEY"] = secret
    elif not settings.get("SECRET_KEY"):
        if not settings["RANDOM_SECRET_KEY"]:
            raise ConfigError(f"SECRET_KEY must be set in {name}")
        settings["SECRET_KEY"] = secrets.token_urlsafe(32)
    for key in _STRINGS:
        if os.environ.get(key):
            settings[key] = os.environ[key]
    for key, kind in _NUMBERS.items():
        if os.environ.get(key, "").strip():
            settings[key] = _number(key, os.environ[key], kind)
    settings["SCHEDULER_ENABLED"] = env_flag("SCHEDULER_ENABLED", settings["SCHEDULER_ENABLED"])
    if os.environ.get("JOB_INTERVALS", "").strip():
        settings["JOB_INTERVALS_SECONDS"] = parse_job_intervals(
            os.environ["JOB_INTERVALS"], settings["JOB_INTERVALS_SECONDS"]
        )
    return settings


# Settings the environment may set as they are. PASSWORD_HASH_METHOD: Werkzeug's method
# string (e.g. "pbkdf2:sha256:600000"); each hash stores its method, so verifying
# hashes made with another one keeps working.
_STRINGS = (
    "SOCKETIO_MESSAGE_QUEUE",
    "SOCKETIO_CHANNEL",
    "NOTIFICATION_SENDER",
    "LOG_LEVEL",
    "PASSWORD_HASH_METHOD",
)
# Numeric settings the environment may set, and their type.
_NUMBERS: dict[str, type[int] | type[float]] = {
    "NOTIFICATION_BATCH_SIZE": int,
    "NOTIFICATION_CLAIM_SECONDS": float,
    "SERVER_PROCESSES": int,
}


def _number(key: str, raw: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a {kind.__name__}") from None
    if value <= 0:
        raise ConfigError(f"{key}={raw!r} must be positive")
    return value


def parse_job_intervals(raw: str, base: Mapping[str, float]) -> dict[str, float]:
    """``JOB_INTERVALS="check_request_timeouts=10,cleanup_old_logs=600"`` over ``base``."""
    intervals = dict(base)
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, seconds = item.partition("=")
        name = name.strip()
        if name not in intervals:
            raise ConfigError(f"JOB_INTERVALS: unknown job {name!r}; jobs: {', '.join(base)}")
        intervals[name] = _number(f"JOB_INTERVALS {name}", seconds, float)
    return intervals


def _class_settings(cls: type[Config]) -> dict[str, Any]:
    return {key: getattr(cls, key) for key in dir(cls) if key.isupper()}


def resolve_config(config: type[Config] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn the factory's argument into a complete settings dict."""
    if config is None:
        return config_from_env()
    if isinstance(config, type):
        return _class_settings(config)
    settings = _class_settings(Config)
    settings.update(config)
    return settings
