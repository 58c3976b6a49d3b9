"""Shared test configuration for the project's own suites (tests/ and reference_app/tests/)."""

from __future__ import annotations

import os

import pymysql
import pytest

pytest_plugins = ("pytester",)

# The machine's own MariaDB: the url backend's tests run against it.
LOCAL_MYSQL_URL = os.environ.get("DBLEAK_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")


def _local_mysql_reachable() -> bool:
    from pytest_dbleak.backends import parse_mysql_url

    endpoint = parse_mysql_url(LOCAL_MYSQL_URL)
    try:
        endpoint.connect(timeout=2).close()
    except pymysql.err.Error:
        return False
    return True


@pytest.fixture(autouse=True)
def _inner_runs_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-randomly is installed for the order tests, which turn it on with
    ``-p randomly``; every other inner pytest run keeps the order its assertions read."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")


@pytest.fixture(scope="session")
def local_mysql_url() -> str:
    """Admin URL of the machine's MariaDB, or a skip that says where it was looked for."""
    if not _local_mysql_reachable():
        pytest.skip(f"no MySQL server answers at {LOCAL_MYSQL_URL} (DBLEAK_TEST_MYSQL_URL)")
    return LOCAL_MYSQL_URL


@pytest.fixture(params=["process", "url"])
def backend_args(request: pytest.FixtureRequest) -> list[str]:
    """CLI arguments that select each backend in turn for a pytester run."""
    if request.param == "url":
        url = request.getfixturevalue("local_mysql_url")
        return ["--dbleak-backend=url", f"--dbleak-mysql-url={url}"]
    return ["--dbleak-backend=process"]
