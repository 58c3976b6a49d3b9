"""PostgreSQL's docker backend: a postgres container, published on loopback and reaped.

No pytest import. testcontainers' ``PostgresContainer`` creates the container (it sets
POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB as the official image expects); its own
readiness wait (``psql`` run inside the container through ``docker exec``, on
testcontainers' own timeout) is replaced by a real login from here, bounded by
--dbleak-startup-timeout, as for MySQL. What every family's container shares - the port
published on loopback, the reaper that removes the container however pytest ends, Ryuk,
the image check and the login wait's bounds - is in ``families._containers``.

The administrator is the image's superuser ``postgres``, with a random password, in its
own database ``postgres``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.families import _containers
from pytest_dbleak.families.postgresql.embedded import PgEndpoint

PORT = 5432
SUPERUSER = "postgres"
OPTION = "--dbleak-postgresql-image"


def _container(image: str, name: str, password: str) -> Any:
    """testcontainers' PostgresContainer, published on 127.0.0.1, waiting on nothing."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.13 kept it at the top level
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise _containers.no_testcontainers() from None

    class _Container(PostgresContainer):
        def _connect(self) -> None:
            """Readiness is ours: a real login, bounded by --dbleak-startup-timeout."""

    container = _Container(
        image, port=PORT, username=SUPERUSER, password=password, dbname="postgres", driver=None
    )
    return _containers.publish(container, PostgresContainer, PORT, name)


def start(image: str, timeout: float) -> tuple[PgEndpoint, Callable[[], None], list[str]]:
    """A running container whose server took a real login; how to stop it; notes."""
    password = secrets.token_hex(16)

    def login(host: str, port: int, container: Any, deadline: float) -> PgEndpoint:
        endpoint = PgEndpoint(host=host, port=port, user=SUPERUSER, password=password)
        _wait_for_login(endpoint, container, image, deadline, timeout)
        return endpoint

    return _containers.start(
        image,
        timeout,
        option=OPTION,
        port=PORT,
        build=lambda name: _container(image, name, password),
        login=login,
    )


def _wait_for_login(
    endpoint: PgEndpoint, container: Any, image: str, deadline: float, timeout: float
) -> None:
    import psycopg

    def attempt() -> str | None:
        try:
            endpoint.connect(timeout=2).close()
            return None
        except psycopg.Error as exc:
            reason = _containers.one_line(exc)
        # The official image's first start runs its set-up on a server without TCP: a
        # server that answers on the port and refuses the password will not change its mind.
        if "password authentication failed" in reason:
            raise DbleakError(
                f"the {image} container refused the login of {SUPERUSER} with the password "
                f"set in POSTGRES_PASSWORD: is it a PostgreSQL image ({OPTION})?"
            )
        return reason

    _containers.wait_for_login(attempt, container, image, deadline, timeout)
