"""The application factory."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from sqlalchemy.exc import ArgumentError

from . import claims, jobs, session_cleanup
from .blueprints import auth, fleet, health, locations, notifications, openapi, requests
from .cli import register_cli
from .config import Config, ConfigError, engine_options_for, parse_database_url, resolve_config
from .db_monitor import DBConnectionMonitor
from .errors import register_error_handlers
from .extensions import db, socketio
from .services.notifications import load_sender
from .tasks import BackgroundTasks

# Importing the handlers registers them on ``socketio`` before any init_app.
from .websocket import events as _socket_events  # noqa: F401

logger = logging.getLogger(__name__)


class OrderedJSONProvider(DefaultJSONProvider):
    """Keys in the order the document is built, as the seed shows them."""

    sort_keys = False


def _settings(config: type[Config] | Mapping[str, Any] | None) -> dict[str, Any]:
    settings = resolve_config(config)
    url = parse_database_url(settings.get("SQLALCHEMY_DATABASE_URI") or _env_database_url())
    settings["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    settings["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options_for(
        url, settings["SQLALCHEMY_ENGINE_OPTIONS"]
    )
    if not settings.get("SECRET_KEY"):
        raise ConfigError("SECRET_KEY is not set")
    return settings


def _env_database_url() -> str | None:
    return os.environ.get("DATABASE_URL")


def create_app(config: type[Config] | Mapping[str, Any] | None = None) -> Flask:
    """Build the application. ``config``: a config class, a mapping of
    settings over ``Config``, or None to read the environment."""
    settings = _settings(config)
    app = Flask("reference_app")
    app.config.from_mapping(settings)
    app.json = OrderedJSONProvider(app)
    logging.getLogger("reference_app").setLevel(app.config["LOG_LEVEL"])

    app.extensions["reference_app.db_monitor"] = DBConnectionMonitor.from_config(app.config)
    app.extensions["reference_app.tasks"] = BackgroundTasks()
    app.extensions["reference_app.notification_sender"] = load_sender(
        app.config["NOTIFICATION_SENDER"]
    )
    try:
        db.init_app(app)  # builds the engine: a wrong driver fails here
    except (ArgumentError, ImportError) as error:
        raise ConfigError(f"DATABASE_URL cannot be used: {error}") from None
    socketio.init_app(
        app,
        async_mode="threading",
        message_queue=app.config["SOCKETIO_MESSAGE_QUEUE"],
        channel=app.config["SOCKETIO_CHANNEL"],
    )

    claims.init_app(app)
    jobs.init_app(app)
    session_cleanup.init_app(app)
    register_error_handlers(app)
    blueprints = (auth, locations, fleet, requests, notifications, health, openapi)
    for blueprint in (module.bp for module in blueprints):
        app.register_blueprint(blueprint)
    register_cli(app)
    return app
