"""The MySQL family (MySQL and MariaDB) behind the seam of ``families.base``.

Where the session's server comes from (process, docker or url), how the plugin reaches
it as its administrator, and how it is described. No pytest import. Each backend yields
a ``RunningServer``: an administrative ``Endpoint`` plus a ``stop()`` that releases
everything the backend started.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.database import Database
from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.families.base import Launch, RunningServer, ServerInfo
from pytest_dbleak.families.mysql.embedded import (
    find_mysqld,
    launch_process,
    start_process,
)
from pytest_dbleak.families.mysql.monitor import Endpoint, Monitor

log = logging.getLogger(__name__)


# -- url -----------------------------------------------------------------------
def parse_mysql_url(url: str) -> Endpoint:
    """An admin Endpoint from `mysql://user:pw@host:port`; rejects other databases."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DbleakError(
            "--dbleak-mysql-url: not a URL (expected mysql://user:pw@host:port)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("mysql", "mariadb"):
        raise DbleakError(
            f"--dbleak-mysql-url: a mysql:// or mariadb:// URL is needed, got {backend}://"
        )
    unix_socket = parsed.query.get("unix_socket")
    if isinstance(unix_socket, tuple):
        unix_socket = unix_socket[0]
    return Endpoint(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        unix_socket=unix_socket,
    )


def start_url(url: str, timeout: float) -> RunningServer:
    """The given server, once a login succeeded within the startup timeout.

    Nothing listening, or a refused login, fails at once; a server that accepts the TCP
    connection but does not greet (still starting, a slow network) gets `timeout`.
    """
    import pymysql

    server = RunningServer("url", parse_mysql_url(url), owned=False)
    limit = max(0.5, timeout)
    try:
        server.endpoint.connect(timeout=limit, read_timeout=limit).close()
    except pymysql.err.Error as exc:
        raise connect_error(server, exc, timeout=limit) from None
    return server


# -- docker ----------------------------------------------------------------------
def start_docker(image: str, timeout: float) -> RunningServer:
    from pytest_dbleak.families.mysql import containers

    endpoint, stop, notes = containers.start(image, timeout)
    return RunningServer("docker", endpoint, owned=True, stop=stop, notes=notes)


# -- selection -------------------------------------------------------------------
def launch(
    backend: str,
    *,
    mysql_url: str | None,
    mysqld: str | None,
    image: str,
    cache: Path,
    timeout: float,
    redactor: Redactor,
    reuse: bool = False,
    reuse_idle: float = 900.0,
) -> Launch:
    """Set off the server the settings ask for; DbleakError says why it cannot be had.

    Only the process backend does work before ``wait()``; the others do it all there.
    With `reuse`, the process backend joins (or leaves behind) a server that outlives the
    session: see reuse.py.
    """
    if mysql_url:
        redactor.add(parse_mysql_url(mysql_url).password)
    if backend == "url" or (backend == "auto" and mysql_url):
        if not mysql_url:
            raise DbleakError("the url backend needs --dbleak-mysql-url or DBLEAK_MYSQL_URL")
        return Launch(lambda: start_url(mysql_url, timeout))
    if backend == "docker":
        return Launch(lambda: start_docker(image, timeout))
    binary = find_mysqld(mysqld)
    if backend == "auto" and _docker_available():
        return Launch(lambda: _docker_else_process(image, binary, cache, timeout))
    if backend == "process" or binary is not None:
        if reuse:
            from pytest_dbleak.families.mysql import reuse as reused

            return reused.launch(binary, cache, timeout, reuse_idle)
        return launch_process(binary, cache, timeout)
    raise DbleakError(
        "no MySQL server available: give --dbleak-mysql-url (url backend), start Docker "
        "(docker backend), or install mariadbd/mysqld (process backend)"
    )


def _docker_available() -> bool:
    from pytest_dbleak.families.mysql.containers import (
        docker_available,  # only auto asks: process runs skip it
    )

    return docker_available()


def _docker_else_process(
    image: str, binary: str | None, cache: Path, timeout: float
) -> RunningServer:
    """auto with a daemon: docker, unless it cannot give us a server and mariadbd can."""
    try:
        return start_docker(image, timeout)
    except DbleakError as exc:
        if binary is None:
            raise
        server = start_process(binary, cache, timeout)
        server.notes.append(f"docker backend unavailable ({exc}); using the process backend")
        return server


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(server: RunningServer, version: str) -> ServerInfo:
    ep = server.endpoint
    admin = Database("", ep.user, ep.password, ep.host, ep.port, local=ep.is_local).url()
    return ServerInfo(server.backend, ep.host, ep.port, ep.unix_socket, version, admin)


def connect_error(
    server: RunningServer, exc: Exception, *, timeout: float | None = None
) -> DbleakError:
    """The one-line error for a server that cannot be reached or refuses the login.

    `timeout`: the wait the user set (--dbleak-startup-timeout), named when it expired.
    """
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in (1045, 1044, 1698):
        why = "refused the login (wrong user or password)"
    elif code in (2003, 2005, 2006, 2013) and timeout is not None and "timed out" in str(exc):
        why = (
            f"cannot be reached: timed out after {timeout:g} s "
            "(--dbleak-startup-timeout or DBLEAK_STARTUP_TIMEOUT sets how long to wait)"
        )
    elif code in (2003, 2005, 2006, 2013):
        why = "cannot be reached"
    else:
        why = f"failed: {_one_line(exc)}"
    return DbleakError(f"MySQL server at {server.where} {why} [{server.backend} backend]")


class MySQLFamily:
    """MySQL and MariaDB: mariadbd or mysqld as a process, a container, or a URL."""

    name = "mysql"
    title = "MySQL"
    counter = "Threads_connected"
    admin_driver = "pymysql"

    def launch(self, settings: Settings, redactor: Redactor) -> Launch:
        return launch(
            settings.backend,
            mysql_url=settings.mysql_url,
            mysqld=settings.mysqld,
            image=settings.image,
            cache=settings.template_cache,
            timeout=settings.startup_timeout,
            redactor=redactor,
            reuse=settings.reuse,
            reuse_idle=settings.reuse_idle,
        )

    def endpoint(self, fields: dict[str, Any]) -> Endpoint:
        return Endpoint(**fields)

    def endpoint_fields(self, endpoint: Any) -> dict[str, Any]:
        assert isinstance(endpoint, Endpoint)
        return dataclasses.asdict(endpoint)

    def monitor(self, running: RunningServer, own_ids: set[int] | None = None) -> Monitor:
        assert isinstance(running.endpoint, Endpoint), "a MySQL server has a MySQL endpoint"
        try:
            return Monitor(running.endpoint, running.where, own_ids)
        except Exception as exc:  # noqa: BLE001 - PyMySQL raises several types here
            raise connect_error(running, exc) from None

    def describe(self, running: RunningServer, version: str) -> ServerInfo:
        return describe(running, version)

    def database(
        self, name: str, user: str, password: str, host: str, port: int, *, local: bool
    ) -> Database:
        return Database(name, user, password, host, port, local=local)

    def connect_error(self, running: RunningServer, exc: Exception) -> DbleakError:
        return connect_error(running, exc)


FAMILY = MySQLFamily()
