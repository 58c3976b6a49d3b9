"""The PostgreSQL family behind the seam of ``families.base``.

Where the session's server comes from (process, docker or url), how the plugin reaches it
as its administrator, and how it is described. No pytest import. Each backend yields a
``RunningServer``: an administrative ``PgEndpoint`` plus a ``stop()`` that releases
everything the backend started.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pytest_dbleak.engine.database import Database
from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.families.base import Family, Launch, RunningServer, ServerInfo
from pytest_dbleak.families.postgresql.embedded import PgEndpoint, find_postgres, spawn_postgres
from pytest_dbleak.families.postgresql.monitor import PgMonitor

_SCHEMES = ("postgresql", "postgres")


# -- url -----------------------------------------------------------------------
def parse_postgresql_url(url: str) -> PgEndpoint:
    """An admin PgEndpoint from `postgresql://user:pw@host:port/db`; rejects other servers.

    ``?host=/run/postgresql`` reaches the server over the unix socket in that folder (as
    libpq reads it), ``?sslmode=...`` is passed on.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DbleakError(
            "--dbleak-postgresql-url: not a URL (expected postgresql://user:pw@host:port/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in _SCHEMES:
        raise DbleakError(
            f"--dbleak-postgresql-url: a postgresql:// URL is needed, got {backend}://"
        )

    def one(key: str) -> str | None:
        value = parsed.query.get(key)
        return value[0] if isinstance(value, tuple) else value

    return PgEndpoint(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password or "",
        socket_dir=one("host"),
        database=parsed.database or "postgres",
        sslmode=one("sslmode"),
    )


def start_url(url: str, timeout: float) -> RunningServer:
    """The given server, once a login succeeded within the startup timeout."""
    import psycopg

    server = RunningServer("url", parse_postgresql_url(url), owned=False)
    limit = max(1.0, timeout)
    try:
        server.endpoint.connect(timeout=limit).close()
    except psycopg.Error as exc:
        raise connect_error(server, exc, timeout=limit) from None
    return server


# -- process --------------------------------------------------------------------------
def launch_process(binary: str | None, settings: Settings) -> Launch:
    """Copy the template and set postgres off now; ``wait()`` awaits its login (it boots
    while pytest imports SQLAlchemy and collects). With --dbleak-reuse, join (or leave
    behind) a server that outlives the session: see reuse.py."""
    if settings.reuse:
        from pytest_dbleak.families.postgresql import reuse

        cache, timeout = settings.template_cache, settings.startup_timeout
        return reuse.launch(binary, cache, timeout, settings.reuse_idle)
    spawned = spawn_postgres(binary, settings.template_cache)

    def wait() -> RunningServer:
        server = spawned.wait(settings.startup_timeout)
        return RunningServer("process", server.endpoint, owned=True, stop=server.stop)

    return Launch(wait, spawned.cancel)


def start_process(binary: str | None, settings: Settings) -> RunningServer:
    return launch_process(binary, settings).wait()


# -- docker ----------------------------------------------------------------------
def start_docker(image: str, timeout: float) -> RunningServer:
    from pytest_dbleak.families.postgresql import containers

    endpoint, stop, notes = containers.start(image, timeout)
    return RunningServer("docker", endpoint, owned=True, stop=stop, notes=notes)


def _docker_available() -> bool:
    from pytest_dbleak.families._containers import docker_available  # only auto asks

    return docker_available()


def _docker_else_process(binary: str | None, settings: Settings) -> RunningServer:
    """auto with a daemon: docker, unless it cannot give a server and postgres can."""
    try:
        return start_docker(settings.postgresql_image, settings.startup_timeout)
    except DbleakError as exc:
        if binary is None:
            raise
        server = start_process(binary, settings)
        server.notes.append(f"docker backend unavailable ({exc}); using the process backend")
        return server


# -- selection -------------------------------------------------------------------
def launch(settings: Settings, redactor: Redactor) -> Launch:
    """Set off the server the settings ask for; DbleakError says why it cannot be had.

    The process backend copies its template and sets postgres off here, so that it boots
    while pytest goes on; the others do their work in ``wait()``. auto follows MySQL's
    rules: the url backend when a URL is given, else docker when a daemon answers (the
    process backend, with a note, when the daemon cannot give a server and a postgres
    binary is here), else the process backend.
    """
    url = settings.postgresql_url
    if url:
        redactor.add(parse_postgresql_url(url).password)
    backend = settings.backend
    if backend == "url" or (backend == "auto" and url):
        if not url:
            raise DbleakError(
                "the url backend needs --dbleak-postgresql-url or DBLEAK_POSTGRESQL_URL"
            )
        return Launch(lambda: start_url(url, settings.startup_timeout))
    image, timeout = settings.postgresql_image, settings.startup_timeout
    if backend == "docker":
        return Launch(lambda: start_docker(image, timeout))
    binary = find_postgres(settings.postgres)
    if backend == "auto" and _docker_available():
        return Launch(lambda: _docker_else_process(binary, settings))
    if binary is None:
        raise DbleakError(
            "no PostgreSQL server available: give --dbleak-postgresql-url (url backend), "
            "start Docker (docker backend), or install postgres (process backend; or give "
            "--dbleak-postgres)"
        )
    return launch_process(binary, settings)


def describe(server: RunningServer, version: str) -> ServerInfo:
    ep = server.endpoint
    name = getattr(ep, "database", "postgres")
    admin = Database(
        name, ep.user, ep.password, ep.host, ep.port, local=ep.is_local, family="postgresql"
    ).url()
    # The header and reports name the server by its version: say which server it is.
    named = version if version.lower().startswith("postgresql") else f"PostgreSQL {version}"
    return ServerInfo(server.backend, ep.host, ep.port, ep.unix_socket, named, admin)


def connect_error(
    server: RunningServer, exc: Exception, *, timeout: float | None = None
) -> DbleakError:
    """The one-line error for a server that cannot be reached or refuses the login.

    libpq gives no error codes for a failed connect: its message says what went wrong.
    """
    text = str(exc).lower()
    if "password authentication failed" in text or "no pg_hba.conf entry" in text:
        why = "refused the login (wrong user or password)"
    elif "timeout expired" in text and timeout is not None:
        why = (
            f"cannot be reached: timed out after {timeout:g} s "
            "(--dbleak-startup-timeout or DBLEAK_STARTUP_TIMEOUT sets how long to wait)"
        )
    elif "connection refused" in text or "timeout expired" in text or "could not" in text:
        why = "cannot be reached"
    else:
        lines = str(exc).strip().splitlines()
        why = f"failed: {lines[0] if lines else type(exc).__name__}"
    return DbleakError(f"PostgreSQL server at {server.where} {why} [{server.backend} backend]")


class PgFamily:
    """PostgreSQL: postgres as a process, a container, or a server given by URL."""

    name = "postgresql"
    title = "PostgreSQL"
    counter = "numbackends"
    admin_driver = "psycopg"

    def launch(self, settings: Settings, redactor: Redactor) -> Launch:
        return launch(settings, redactor)

    def endpoint(self, fields: dict[str, Any]) -> PgEndpoint:
        return PgEndpoint(**fields)

    def endpoint_fields(self, endpoint: Any) -> dict[str, Any]:
        assert isinstance(endpoint, PgEndpoint)
        return dataclasses.asdict(endpoint)

    def monitor(self, running: RunningServer, own_ids: set[int] | None = None) -> PgMonitor:
        assert isinstance(running.endpoint, PgEndpoint), "a PostgreSQL server has a PgEndpoint"
        import psycopg

        try:
            return PgMonitor(running.endpoint, running.where, own_ids)
        except psycopg.Error as exc:
            raise connect_error(running, exc) from None

    def describe(self, running: RunningServer, version: str) -> ServerInfo:
        return describe(running, version)

    def database(
        self, name: str, user: str, password: str, host: str, port: int, *, local: bool
    ) -> Database:
        return Database(name, user, password, host, port, local=local, family=self.name)

    def connect_error(self, running: RunningServer, exc: Exception) -> DbleakError:
        return connect_error(running, exc)


FAMILY: Family = PgFamily()
