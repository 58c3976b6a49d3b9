"""Commands: ``flask --app reference_app init-db [--demo]`` and ``jobs run NAME``.

Each command releases the engine on the way out, and reports a database it
cannot use as one line, without a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from .charset import ensure_database
from .demo import PASSWORD_ENV, seed_demo
from .errors import one_line
from .extensions import db
from .jobs import JOBS, run_job
from .lifecycle import shutdown_app
from .logging_setup import configure_logging


@contextmanager
def released(app: Flask) -> Iterator[None]:
    """Turn database errors into a one-line click error; release the app."""
    try:
        yield
    except SQLAlchemyError as error:
        raise click.ClickException(f"database error: {one_line(error)}") from None
    finally:
        shutdown_app(app)


@click.command("init-db")
@click.option(
    "--demo", is_flag=True, help=f"Add demo data; the password comes from {PASSWORD_ENV}."
)
def init_db_command(demo: bool) -> None:
    """Create the database if missing (utf8mb4) and the schema (and, with --demo,
    demo locations, buggies and users)."""
    configure_logging()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    password = os.environ.get(PASSWORD_ENV, "")
    with released(app):
        if demo and not password:
            raise click.ClickException(f"--demo needs the demo users' password in {PASSWORD_ENV}")
        options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
        check = ensure_database(db.engine.url, options.get("connect_args"))
        for note in check.notes:
            click.echo(note if check.created else f"warning: {note}", err=not check.created)
        db.create_all()
        added = seed_demo(password) if demo else None
    click.echo("schema created" + (f"; demo data added: {json.dumps(added)}" if demo else ""))


@click.group("jobs")
def jobs_group() -> None:
    """Background jobs."""


@jobs_group.command("run")
@click.argument("name")
def run_job_command(name: str) -> None:
    """Run one job once: retry_failed_notifications, mark_permanently_failed,
    cleanup_old_logs or check_request_timeouts."""
    configure_logging()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    with released(app):
        if name not in JOBS:
            raise click.ClickException(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
        result = run_job(app, name)
    click.echo(json.dumps({"job": name, **result}))


def register_cli(app: Flask) -> None:
    app.cli.add_command(init_db_command)
    app.cli.add_command(jobs_group)
