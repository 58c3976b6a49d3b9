"""PostgreSQL's docker backend against real containers of the local PostgreSQL test image.

The image is built from Debian packages by ``tools/docker-image/build.sh postgresql``
(.ci/run does it and exports DBLEAK_TEST_PG_DOCKER_IMAGE); tests that need it skip,
naming Docker, where no daemon answers or the image is missing. The paths without Docker
run everywhere: they point the inner run at a socket where no daemon listens.

Every inner run requests only ``dbleak_postgresql_*`` fixtures: the session checks
PostgreSQL. Each container the plugin starts carries the label ``LABEL=<pid of pytest>``;
an inner test records its pid and the containers so labelled, and the outer test checks
that none is left once the run ended - by exit, SIGKILL or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.helpers import (
    FAST,
    ONLY_DBLEAK,
    all_output,
    failure_of,
    line_of,
    only_dbleak_and,
)

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from pytest_dbleak.families._containers import LABEL

NO_DAEMON = "unix:///nonexistent/dbleak-no-docker.sock"
MISSING_IMAGE = "dbleak-no-such-image:0"

PREAMBLE = """\
import json
import os

import docker
import psycopg
import pytest
import sqlalchemy as sa

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends


@pytest.fixture(scope="session", autouse=True)
def _record_containers(dbleak_postgresql_server):
    # This pytest's pid and the containers labelled with it, for the outer test.
    client = docker.from_env(timeout=30)
    found = client.api.containers(all=True, filters={"label": f"LABEL={os.getpid()}"})
    client.close()
    with open("containers.json", "w") as f:
        json.dump({"pid": os.getpid(), "names": [n for c in found for n in c["Names"]]}, f)
""".replace("LABEL", LABEL)

LEAKY_AND_CLEAN = (
    PREAMBLE
    + """

def test_leaky_raw_connection(dbleak_postgresql_database):
    KEEP.append(psycopg.connect(**dbleak_postgresql_database.connect_kwargs()))  # LEAK-raw


def test_clean_raw_connection(dbleak_postgresql_database):
    psycopg.connect(**dbleak_postgresql_database.connect_kwargs()).close()


def test_leaky_checkout(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    KEEP.append(engine.connect())  # LEAK-checkout


def test_clean_checkout(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""
)


def _docker(pytester: pytest.Pytester, image: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=docker",
        f"--dbleak-postgresql-image={image}",
        FAST,
        *ONLY_DBLEAK,
        *args,
        timeout=300,
    )


def _labelled(pid: int) -> list[str]:
    """Names of the containers (running or not) that the pytest with `pid` started."""
    import docker

    client = docker.from_env(timeout=30)
    try:  # the low-level list: no per-container inspect that a removal could race
        found = client.api.containers(all=True, filters={"label": f"{LABEL}={pid}"})
        return [name for c in found for name in c["Names"]]
    finally:
        client.close()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# -- without a daemon ----------------------------------------------------------------
def test_the_docker_backend_without_a_daemon_is_one_usage_error_that_names_docker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    pytester.makepyfile(test_pg="def test_pg(dbleak_postgresql_url):\n    pass\n")
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=docker", *ONLY_DBLEAK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == [
        "ERROR: dbleak: the docker backend needs a running Docker daemon; none answered: start "
        "Docker, or choose another backend (--dbleak-backend=process or url)"
    ]
    assert "Traceback" not in all_output(result)


# -- with a daemon ----------------------------------------------------------------------
def test_on_docker_a_leaky_test_fails_at_its_line_its_clean_twin_passes_and_no_container_stays(
    pytester: pytest.Pytester, pg_docker_test_image: str
) -> None:
    pytester.makepyfile(test_pg=LEAKY_AND_CLEAN)
    result = _docker(pytester, pg_docker_test_image, "--dbleak-report=r.json")

    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["dbleak: docker backend, server PostgreSQL * at 127.0.0.1:*"])
    for name, kind, marker in (
        ("test_leaky_raw_connection", "server_connection", "# LEAK-raw"),
        ("test_leaky_checkout", "checked_out", "# LEAK-checkout"),
    ):
        line = line_of(LEAKY_AND_CLEAN, marker)
        block = failure_of(result, name)
        assert block.lines[1].startswith(
            f"dbleak: 1 connection leaked (1 {kind}) at test_pg.py:{line}"
        ), block.str()
    server = json.loads((pytester.path / "r.json").read_text())["server"]
    assert server["backend"] == "docker"
    assert server["family"] == "postgresql"
    assert server["host"] == "127.0.0.1"  # published on loopback, not the bridge gateway
    assert server["version"].startswith("PostgreSQL ")

    seen = json.loads((pytester.path / "containers.json").read_text())
    assert len(seen["names"]) == 1, seen  # one container, labelled with the inner pid
    assert _labelled(seen["pid"]) == [], "the run's container outlived it"


def test_on_docker_xdist_workers_share_one_container(
    pytester: pytest.Pytester, pg_docker_test_image: str
) -> None:
    pytester.makepyfile(
        **{
            f"test_{n}": "import os\n\n"
            f"def test_{n}(dbleak_postgresql_server, dbleak_postgresql_url):\n"
            f"    with open(f'port-{{os.getpid()}}-{n}', 'w') as f:\n"
            f"        f.write(str(dbleak_postgresql_server.port))\n"
            for n in range(4)
        }
    )
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=docker",
        f"--dbleak-postgresql-image={pg_docker_test_image}",
        *only_dbleak_and("xdist"),
        "-n",
        "2",
        timeout=300,
    )
    result.assert_outcomes(passed=4)
    ports = {p.read_text() for p in pytester.path.glob("port-*")}
    assert len(ports) == 1, f"one container for every worker, got {ports}"


def test_auto_with_a_daemon_whose_image_is_missing_uses_the_process_backend_and_says_so(
    pytester: pytest.Pytester, pg_docker_test_image: str
) -> None:
    """The same rules as MySQL's: auto prefers a container; one the daemon cannot give
    falls back to the process backend in one line."""
    from pytest_dbleak.families.postgresql.embedded import find_postgres

    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    pytester.makepyfile(
        test_pg="def test_pg(dbleak_postgresql_server):\n"
        "    assert dbleak_postgresql_server.backend == 'process'\n"
    )
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=auto",
        f"--dbleak-postgresql-image={MISSING_IMAGE}",
        *ONLY_DBLEAK,
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"dbleak: docker backend unavailable (*{MISSING_IMAGE}*); using the process backend"]
    )


def test_auto_with_a_daemon_starts_a_container_as_for_mysql(
    pg_docker_test_image: str, tmp_path: Path
) -> None:
    from pytest_dbleak.engine.errors import Redactor
    from pytest_dbleak.engine.settings import Settings
    from pytest_dbleak.families.postgresql import family

    settings = Settings(
        backend="auto", postgresql_image=pg_docker_test_image, cache_dir=str(tmp_path)
    )
    running = family.FAMILY.launch(settings, Redactor()).wait()
    try:
        assert running.backend == "docker"
        assert running.where.startswith("127.0.0.1:")
        assert _labelled(os.getpid()), "the container is labelled with this pytest's pid"
        monitor = family.FAMILY.monitor(running)
        assert monitor.query("SELECT current_user")[0][0] == "postgres"
        monitor.close()
    finally:
        running.stop()
    assert _labelled(os.getpid()) == []


# -- bad input -------------------------------------------------------------------------
def test_an_image_that_is_not_here_and_cannot_be_pulled_is_one_line_naming_the_option(
    pytester: pytest.Pytester, pg_docker_test_image: str
) -> None:
    pytester.makepyfile(test_pg="def test_pg(dbleak_postgresql_url):\n    pass\n")
    result = _docker(pytester, MISSING_IMAGE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"ERROR: dbleak: the image {MISSING_IMAGE} is not on this machine and cannot be pulled"
    )
    assert errors[0].endswith("(--dbleak-postgresql-image names another)")
    assert "Traceback" not in all_output(result)


def test_a_container_not_ready_within_the_startup_timeout_is_one_line_and_is_removed(
    pytester: pytest.Pytester, pg_docker_test_image: str
) -> None:
    pytester.makepyfile(test_pg="def test_pg(dbleak_postgresql_url):\n    pass\n")
    result = _docker(pytester, pg_docker_test_image, "--dbleak-startup-timeout=0.01")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"ERROR: dbleak: the {pg_docker_test_image} container did not accept a login within 0.01 s"
    )
    assert "Traceback" not in all_output(result)


def test_an_image_that_is_not_postgresql_is_one_line(
    pytester: pytest.Pytester, pg_docker_test_image: str, docker_test_image: str
) -> None:
    # The MariaDB test image: nothing ever answers on 5432.
    pytester.makepyfile(test_pg="def test_pg(dbleak_postgresql_url):\n    pass\n")
    result = _docker(pytester, docker_test_image, "--dbleak-startup-timeout=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"ERROR: dbleak: the {docker_test_image} container ")
    assert "Traceback" not in all_output(result)


# -- no orphans --------------------------------------------------------------------------
WAIT_TO_BE_KILLED = """
import json, os, time


def test_waits_to_be_killed(dbleak_postgresql_server, dbleak_postgresql_url):
    target = os.environ["DBLEAK_TEST_HANDSHAKE"]
    with open(target + ".tmp", "w") as f:
        json.dump({"port": dbleak_postgresql_server.port}, f)
    os.replace(target + ".tmp", target)
    time.sleep(300)  # until the outer test kills this run
"""


@pytest.fixture
def inner_run(pytester: pytest.Pytester, pg_docker_test_image: str) -> Iterator[Any]:
    """A pytest --dbleak on the docker backend, inside its one test."""
    directory = pytester.path / "run"
    directory.mkdir()
    (directory / "test_wait.py").write_text(WAIT_TO_BE_KILLED)
    handshake = directory / "handshake.json"
    # The plugin's reaper alone (where Ryuk could run, it would remove the container too).
    env = dict(
        os.environ, DBLEAK_TEST_HANDSHAKE=str(handshake), TESTCONTAINERS_RYUK_DISABLED="true"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            *ONLY_DBLEAK,
            "--dbleak",
            "--dbleak-backend=docker",
            f"--dbleak-postgresql-image={pg_docker_test_image}",
            "test_wait.py",
        ],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: handshake.exists() or proc.poll() is not None, 120, "the inner test to start"
        )
        assert proc.poll() is None, "the inner run ended early"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGKILL, "SIGKILL"), (signal.SIGINT, "Ctrl-C")])
def test_a_killed_or_interrupted_pytest_leaves_no_postgresql_container_behind(
    inner_run: subprocess.Popen[bytes], sig: int, how: str
) -> None:
    assert _labelled(inner_run.pid), "the inner run's container is not there"
    inner_run.send_signal(sig)
    inner_run.wait(timeout=120)
    _wait_for(lambda: not _labelled(inner_run.pid), 60, f"the container to go after {how}")


# -- the image ---------------------------------------------------------------------------
def _run_image(image: str, environment: dict[str, str]) -> Any:
    import docker

    client = docker.from_env(timeout=60)
    try:
        return client.containers.run(
            image,
            detach=True,
            environment=environment,
            labels={LABEL: "test-image"},
            ports={"5432/tcp": ("127.0.0.1", None)},
        )
    finally:
        client.close()


def test_the_image_honours_the_variables_postgres_container_sets(pg_docker_test_image: str) -> None:
    import psycopg

    password = "p'w\\\"x"  # quotes and a backslash: the entrypoint must quote them for SQL
    container = _run_image(
        pg_docker_test_image,
        {"POSTGRES_USER": "tc", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "tcdb"},
    )
    try:
        container.reload()
        port = int(container.ports["5432/tcp"][0]["HostPort"])
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    user="tc",
                    password=password,
                    dbname="tcdb",
                    sslmode="disable",
                    connect_timeout=2,
                )
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            row = conn.execute(
                "SELECT current_user, current_database(), rolsuper FROM pg_roles "
                "WHERE rolname = current_user"
            ).fetchone()
        assert row == ("tc", "tcdb", True)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                host="127.0.0.1",
                port=port,
                user="tc",
                password="wrong",
                dbname="tcdb",
                sslmode="disable",
            )
    finally:
        container.remove(force=True, v=True)


def test_the_image_refuses_to_start_without_a_password(pg_docker_test_image: str) -> None:
    container = _run_image(pg_docker_test_image, {})
    try:
        assert container.wait(timeout=60)["StatusCode"] == 1
        assert b"superuser password is not specified" in container.logs()
    finally:
        container.remove(force=True, v=True)
