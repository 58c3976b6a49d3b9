"""Shared test configuration for the project's own suites (tests/ and reference_app/tests/)."""

from __future__ import annotations

import os
from pathlib import Path

import pymysql
import pytest

pytest_plugins = ("pytester",)

# The machine's own MariaDB: the url backend's tests run against it.
LOCAL_MYSQL_URL = os.environ.get("DBLEAK_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")


def _local_mysql_reachable() -> bool:
    from pytest_dbleak.families.mysql.family import parse_mysql_url

    endpoint = parse_mysql_url(LOCAL_MYSQL_URL)
    try:
        endpoint.connect(timeout=2).close()
    except pymysql.err.Error:
        return False
    return True


ACCEPTANCE = Path(__file__).parent / "tests" / "acceptance"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs an inner pytest is marked ``pytester``, so that
    ``-m "not pytester"`` is the quick loop: those using the pytester fixture (directly or
    through another fixture), and every acceptance test - some run their inner pytest
    through a module-scoped fixture or ``subprocess`` instead, and are as slow."""
    for item in items:
        if "pytester" in getattr(item, "fixturenames", ()) or item.path.is_relative_to(ACCEPTANCE):
            item.add_marker(pytest.mark.pytester)


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


# The docker backend's tests run a local image built by tools/docker-image/build.sh
# (.ci/run builds it and exports this variable): no registry is reachable here.
DOCKER_TEST_IMAGE = os.environ.get("DBLEAK_TEST_DOCKER_IMAGE", "dbleak-mariadb:bookworm")
# Where .ci/run started a daemon of its own. Only the docker tests see it: the rest of the
# suite keeps the machine's own view of Docker.
DOCKER_TEST_HOST = os.environ.get("DBLEAK_TEST_DOCKER_HOST")
_docker_skip: list[str] = []  # the reason, once known; [""] when Docker is usable


@pytest.fixture
def docker_test_image(monkeypatch: pytest.MonkeyPatch) -> str:
    """The docker backend's test image, or a skip that names Docker and says why."""
    from pytest_dbleak.families.mysql.containers import docker_available, ensure_image

    if DOCKER_TEST_HOST:
        monkeypatch.setenv("DOCKER_HOST", DOCKER_TEST_HOST)
    if not _docker_skip:
        if not docker_available():
            _docker_skip.append("no Docker daemon answers (docker backend; .ci/run starts one)")
        else:
            try:
                ensure_image(DOCKER_TEST_IMAGE, timeout=10)
                _docker_skip.append("")
            except Exception as exc:  # noqa: BLE001 - any reason the image cannot be had
                _docker_skip.append(
                    f"Docker answers but has no {DOCKER_TEST_IMAGE} (docker backend; "
                    f"tools/docker-image/build.sh builds it): {exc}"
                )
    if _docker_skip[0]:
        pytest.skip(_docker_skip[0])
    return DOCKER_TEST_IMAGE


@pytest.fixture(params=["process", "url", "docker"])
def backend_args(request: pytest.FixtureRequest) -> list[str]:
    """CLI arguments that select each backend in turn for a pytester run."""
    if request.param == "url":
        url = request.getfixturevalue("local_mysql_url")
        return ["--dbleak-backend=url", f"--dbleak-mysql-url={url}"]
    if request.param == "docker":
        image = request.getfixturevalue("docker_test_image")
        return ["--dbleak-backend=docker", f"--dbleak-image={image}"]
    return ["--dbleak-backend=process"]
