"""Every inner run sees a clean DBLEAK_* environment and the real template cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.acceptance.helpers import BEHAVIOUR_SETTINGS, TEMPLATE_CACHE, pg_admin_url


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see no DBLEAK_* setting from the outer environment."""
    for name in BEHAVIOUR_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBLEAK_CACHE_DIR", os.environ.get("DBLEAK_CACHE_DIR", TEMPLATE_CACHE))


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    """A postgres of this suite's own (never the machine's), for url-backend runs."""
    pytest.importorskip("psycopg", reason="the postgresql extra is not installed")
    from pytest_dbleak.families.postgresql.embedded import find_postgres, start_postgres
    from tests.families.servers import CACHE

    binary = find_postgres(None)
    if binary is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    server = start_postgres(binary, CACHE, 30)
    yield server
    server.stop()


@pytest.fixture(params=["process", "url"])
def pg_backend_args(request: pytest.FixtureRequest) -> list[str]:
    """CLI arguments that select each PostgreSQL backend in turn for a pytester run."""
    return _pg_backend(request)


@pytest.fixture(params=["process", "url", "docker"])
def pg_every_backend_args(request: pytest.FixtureRequest) -> list[str]:
    """The same, with the docker backend (its local test image) for the leak-kind matrix;
    a forked child's client port is not seen through docker's port proxy."""
    return _pg_backend(request)


def _pg_backend(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "docker":
        image = request.getfixturevalue("pg_docker_test_image")
        return ["--dbleak-backend=docker", f"--dbleak-postgresql-image={image}"]
    if request.param == "url":
        url = pg_admin_url(request.getfixturevalue("pg_server"))
        return ["--dbleak-backend=url", f"--dbleak-postgresql-url={url}"]
    from pytest_dbleak.families.postgresql.embedded import find_postgres

    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    return ["--dbleak-backend=process"]
