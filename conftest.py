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
def _inner_runs_as_if_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs keep the order their assertions read (pytest-randomly is
    installed for the order tests, which turn it on with ``-p randomly``) and are no
    xdist workers, whatever the outer run is."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")
    # Under an outer `-n 2`, this process is an xdist worker: an inner run must not
    # inherit that (pytest-benchmark then warns about xdist first on every inner run).
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def local_mysql_url() -> str:
    """Admin URL of the machine's MariaDB, or a skip that says where it was looked for."""
    if not _local_mysql_reachable():
        pytest.skip(f"no MySQL server answers at {LOCAL_MYSQL_URL} (DBLEAK_TEST_MYSQL_URL)")
    return LOCAL_MYSQL_URL


# The docker backend's tests run local images built by tools/docker-image/build.sh
# (.ci/run builds them and exports these variables): no registry is reachable here.
DOCKER_TEST_IMAGE = os.environ.get("DBLEAK_TEST_DOCKER_IMAGE", "dbleak-mariadb:bookworm")
PG_DOCKER_TEST_IMAGE = os.environ.get("DBLEAK_TEST_PG_DOCKER_IMAGE", "dbleak-postgresql:bookworm")
# Where .ci/run started a daemon of its own. Only the docker tests see it: the rest of the
# suite keeps the machine's own view of Docker.
DOCKER_TEST_HOST = os.environ.get("DBLEAK_TEST_DOCKER_HOST")
# Per image: the reason, once known; [""] when Docker and the image are usable.
_docker_skip: dict[str, list[str]] = {}


def _docker_image_or_skip(monkeypatch: pytest.MonkeyPatch, image: str, build: str) -> str:
    """`image` on a daemon that answers, or a skip that names Docker and says why."""
    from pytest_dbleak.families._containers import docker_available, ensure_image

    if DOCKER_TEST_HOST:
        monkeypatch.setenv("DOCKER_HOST", DOCKER_TEST_HOST)
    skip = _docker_skip.setdefault(image, [])
    if not skip:
        if not docker_available():
            skip.append("no Docker daemon answers (docker backend; .ci/run starts one)")
        else:
            try:
                ensure_image(image, timeout=10)
                skip.append("")
            except Exception as exc:  # noqa: BLE001 - any reason the image cannot be had
                skip.append(
                    f"Docker answers but has no {image} (docker backend; {build} builds it): {exc}"
                )
    if skip[0]:
        pytest.skip(skip[0])
    return image


@pytest.fixture
def docker_test_image(monkeypatch: pytest.MonkeyPatch) -> str:
    """The docker backend's test image, or a skip that names Docker and says why."""
    return _docker_image_or_skip(monkeypatch, DOCKER_TEST_IMAGE, "tools/docker-image/build.sh")


@pytest.fixture
def pg_docker_test_image(monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL docker backend's test image, or a skip that names Docker and says why."""
    return _docker_image_or_skip(
        monkeypatch, PG_DOCKER_TEST_IMAGE, "tools/docker-image/build.sh postgresql"
    )


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
