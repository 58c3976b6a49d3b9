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


@pytest.fixture(scope="session")
def local_mysql_url() -> str:
    """Admin URL of the machine's MariaDB, or a skip that says where it was looked for."""
    if not _local_mysql_reachable():
        pytest.skip(f"no MySQL server answers at {LOCAL_MYSQL_URL} (DBLEAK_TEST_MYSQL_URL)")
    return LOCAL_MYSQL_URL


# The docker backend's tests run a local image built by tools/docker-image/build.sh
# (.ci/run builds it and exports this variable): no registry is reachable here.
DOCKER_TEST_IMAGE = os.environ.get("DBLEAK_TEST_DOCKER_IMAGE", "dbleak-mariadb:bookworm")


@pytest.fixture(scope="session")
def docker_test_image() -> str:
    """The docker backend's test image, or a skip that names Docker and says why."""
    from pytest_dbleak.containers import docker_available, ensure_image

    if not docker_available():
        pytest.skip("no Docker daemon answers (docker backend; .ci/run starts dockerd)")
    try:
        ensure_image(DOCKER_TEST_IMAGE, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any reason the image cannot be had
        pytest.skip(f"Docker answers but has no {DOCKER_TEST_IMAGE} (docker backend; "
                    f"tools/docker-image/build.sh builds it): {exc}")
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
