"""The docker backend: a MySQL-compatible container, published on loopback and reaped.

No pytest import. testcontainers' ``MySqlContainer`` creates the container (it sets
MYSQL_ROOT_PASSWORD, MYSQL_DATABASE, MYSQL_USER, MYSQL_PASSWORD as the official images
expect). What every family's container shares - the port published on loopback, the
reaper that removes the container however pytest ends, Ryuk, the image check and the
login wait's bounds - is in ``families._containers``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from pytest_dbleak.families import _containers
from pytest_dbleak.families._containers import (
    LABEL,
    ImageUnavailable,
    Reaper,
    docker_available,
    ensure_image,
)
from pytest_dbleak.families.mysql.monitor import Endpoint

__all__ = [
    "LABEL",
    "ImageUnavailable",
    "Reaper",
    "docker_available",
    "ensure_image",
    "start",
]

PORT = 3306


def _container(image: str, name: str, root_password: str) -> Any:
    """testcontainers' MySqlContainer, published on 127.0.0.1, waiting on nothing."""
    try:
        from testcontainers.community.mysql import MySqlContainer
    except ImportError:  # testcontainers < 4.13 kept it at the top level
        try:
            from testcontainers.mysql import MySqlContainer
        except ImportError:
            raise _containers.no_testcontainers() from None

    class _Container(MySqlContainer):
        def _connect(self) -> None:
            """Readiness is ours: a real login, bounded by --dbleak-startup-timeout."""

    container = _Container(
        image,
        username="dbleak",
        password=secrets.token_hex(16),
        root_password=root_password,
        dbname="dbleak",
    )
    return _containers.publish(container, MySqlContainer, PORT, name)


def start(image: str, timeout: float) -> tuple[Endpoint, Callable[[], None], list[str]]:
    """A running container whose server took a real login; how to stop it; notes."""
    root_password = secrets.token_hex(16)

    def login(host: str, port: int, container: Any, deadline: float) -> Endpoint:
        endpoint = Endpoint(host=host, port=port, user="root", password=root_password)
        _wait_for_login(endpoint, container, image, deadline, timeout)
        return endpoint

    return _containers.start(
        image,
        timeout,
        option="--dbleak-image",
        port=PORT,
        build=lambda name: _container(image, name, root_password),
        login=login,
    )


def _wait_for_login(
    endpoint: Endpoint, container: Any, image: str, deadline: float, timeout: float
) -> None:
    import pymysql

    def attempt() -> str | None:
        try:
            endpoint.connect(timeout=2).close()
            return None
        except pymysql.err.Error as exc:
            return _containers.one_line(exc)

    _containers.wait_for_login(attempt, container, image, deadline, timeout)
