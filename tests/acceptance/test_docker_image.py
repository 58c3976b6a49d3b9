"""The local test image (tools/docker-image) behaves like the official images for the
variables testcontainers' MySqlContainer sets: a real container, real logins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from pytest_dbleak.families.mysql.containers import LABEL

# Quotes and a backslash: the entrypoint must quote what it hands to SQL.
PASSWORD = "p'w\\\"x"
ROOT_PASSWORD = "r00t'pw"


@pytest.fixture
def docker_client(docker_test_image: str) -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=60)
    yield client
    client.close()


def _run(client: Any, image: str, environment: dict[str, str]) -> Any:
    return client.containers.run(
        image,
        detach=True,
        environment=environment,
        labels={LABEL: "test-image"},
        ports={"3306/tcp": ("127.0.0.1", None)},
    )


def _login(port: int, user: str, password: str, database: str | None, deadline: float) -> Any:
    while True:
        try:
            return pymysql.connect(
                host="127.0.0.1",
                port=port,
                user=user,
                password=password,
                database=database,
                connect_timeout=2,
                ssl_disabled=True,
            )
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_image_creates_the_database_and_user_and_sets_the_root_password(
    docker_client: Any, docker_test_image: str
) -> None:
    container = _run(
        docker_client,
        docker_test_image,
        {
            "MYSQL_ROOT_PASSWORD": ROOT_PASSWORD,
            "MYSQL_DATABASE": "shop",
            "MYSQL_USER": "clerk",
            "MYSQL_PASSWORD": PASSWORD,
        },
    )
    try:
        container.reload()
        port = int(container.ports["3306/tcp"][0]["HostPort"])
        assert container.ports["3306/tcp"][0]["HostIp"] == "127.0.0.1"
        deadline = time.monotonic() + 60
        user = _login(port, "clerk", PASSWORD, "shop", deadline)
        with user.cursor() as cur:
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cur.fetchone() == ("shop", "clerk@%")
            cur.execute("CREATE TABLE t (id INT)")  # the user owns its database
        user.close()
        root = _login(port, "root", ROOT_PASSWORD, None, deadline)
        root.close()
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(
                host="127.0.0.1",
                port=port,
                user="root",
                password="",
                connect_timeout=2,
                ssl_disabled=True,
            )
        logs = container.logs().decode(errors="replace")
        assert logs.count("ready for connections") == 2  # what MySqlContainer waits for
    finally:
        container.remove(force=True, v=True)


def test_without_a_password_variable_the_container_exits_with_the_official_message(
    docker_client: Any, docker_test_image: str
) -> None:
    container = _run(docker_client, docker_test_image, {"MYSQL_DATABASE": "shop"})
    try:
        assert container.wait(timeout=60)["StatusCode"] == 1
        logs = container.logs().decode(errors="replace")
        assert "database is uninitialized and password option is not specified" in logs
    finally:
        container.remove(force=True, v=True)
