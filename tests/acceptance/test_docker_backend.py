"""The docker backend against real containers of the local test image.

The image is built from Debian packages by tools/docker-image/build.sh (.ci/run does it);
tests that need it skip, naming Docker, where no daemon answers or the image is missing.
The paths without Docker run everywhere: they point the inner run at a socket where no
daemon listens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, all_output, failure_of
from tests.acceptance.test_must_not_fail import EARLIER_LEAK, WIDER_FIXTURES

ROOT = Path(__file__).resolve().parents[2]
NO_DAEMON = "unix:///nonexistent/dbleak-no-docker.sock"

LEAKY_AND_CLEAN = (
    PREAMBLE
    + """

def test_clean(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""
)


def _docker(pytester: pytest.Pytester, image: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=docker",
        f"--dbleak-image={image}",
        FAST,
        *ONLY_DBLEAK,
        *args,
        timeout=300,
    )


# -- without a daemon ----------------------------------------------------------------
def test_the_docker_backend_without_a_daemon_is_one_usage_error_that_names_docker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: dbleak: the docker backend needs a running Docker daemon*"]
    )
    assert "Traceback" not in all_output(result)


def test_auto_falls_back_to_the_process_backend_when_no_daemon_answers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    pytester.makepyfile(
        test_it="def test_backend(dbleak_server):\n    assert dbleak_server.backend == 'process'\n"
    )
    pytester.runpytest_subprocess("--dbleak-backend=auto").assert_outcomes(passed=1)


def test_without_a_daemon_the_docker_matrix_skips_with_a_reason_that_names_docker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    monkeypatch.delenv("DBLEAK_TEST_DOCKER_HOST", raising=False)
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(test_it="def test_a_backend(backend_args):\n    pass\n")
    result = pytester.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_a_backend?docker? SKIPPED*"])
    result.stdout.fnmatch_lines(["SKIPPED *no Docker daemon answers (docker backend*"])
    assert "test_a_backend[process] PASSED" in result.stdout.str()


# -- with a daemon ----------------------------------------------------------------------
def test_the_docker_backend_fails_a_leaky_test_and_passes_its_clean_twin(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = _docker(pytester, docker_test_image, "--dbleak-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_leaky - dbleak: 1 connection leaked*"])
    server = json.loads((pytester.path / "r.json").read_text())["server"]
    assert server["backend"] == "docker"
    assert server["host"] == "127.0.0.1"  # published on loopback, not the bridge gateway


def test_on_docker_connections_of_wider_fixtures_are_not_leaks(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_wider=PREAMBLE + WIDER_FIXTURES)
    _docker(pytester, docker_test_image).assert_outcomes(passed=5)


def test_on_docker_a_leak_made_by_an_earlier_test_fails_only_that_test(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_earlier=PREAMBLE + EARLIER_LEAK)
    result = _docker(pytester, docker_test_image, "-rA")
    result.assert_outcomes(failed=1, passed=2)
    failure_of(result, "test_leaky").fnmatch_lines(
        [
            "dbleak: 3 connections leaked (1 checked_out, 1 undisposed_engine, "
            "1 server_connection) at test_earlier.py:*",
        ]
    )


PER_WORKER = (
    PREAMBLE
    + """
import os


@pytest.mark.parametrize("n", range(4))
def test_records_where_it_ran(dbleak_server, dbleak_mysql_url, n):
    u = sa.engine.make_url(dbleak_mysql_url)
    with open(f"seen-{os.environ['PYTEST_XDIST_WORKER']}-{n}.json", "w") as f:
        json.dump({"port": dbleak_server.port, "db": u.database, "user": u.username}, f)
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""
)


def test_xdist_on_docker_shares_one_container_with_a_database_and_user_per_worker(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_workers="import json\n" + PER_WORKER)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=docker",
        f"--dbleak-image={docker_test_image}",
        FAST,
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        timeout=300,
    )
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_workers.py::test_leaky*dbleak: 1 connection*"])
    seen = [json.loads(p.read_text()) for p in pytester.path.glob("seen-*.json")]
    workers = {p.name.split("-")[1] for p in pytester.path.glob("seen-*.json")}
    assert len(seen) == 4
    assert len({s["port"] for s in seen}) == 1, "the workers did not share one container"
    if len(workers) == 2:  # both workers ran some: each had its own database and user
        assert len({s["db"] for s in seen}) == 2
        assert len({s["user"] for s in seen}) == 2


# -- bad input and auto -------------------------------------------------------------
MISSING_IMAGE = "dbleak-no-such-image:0"


def test_an_image_that_is_not_here_and_cannot_be_pulled_is_one_usage_error(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = _docker(pytester, MISSING_IMAGE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"ERROR: dbleak: the image {MISSING_IMAGE} is not on this machine and cannot be pulled"
    )
    assert "Traceback" not in all_output(result)


def test_auto_with_a_daemon_that_cannot_provide_the_image_uses_the_process_backend(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(
        test_it="def test_backend(dbleak_server):\n    assert dbleak_server.backend == 'process'\n"
    )
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=auto", f"--dbleak-image={MISSING_IMAGE}", *ONLY_DBLEAK
    )
    result.assert_outcomes(passed=1)
    notes = [line for line in result.stdout.lines if "docker backend unavailable" in line]
    assert len(notes) == 1, result.stdout.str()
    assert notes[0].startswith(
        f"dbleak: docker backend unavailable (the image {MISSING_IMAGE} is not on this machine"
    )
    assert notes[0].endswith("; using the process backend")


def test_a_container_that_is_not_ready_within_the_startup_timeout_is_one_usage_error(
    pytester: pytest.Pytester, docker_test_image: str
) -> None:
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = _docker(pytester, docker_test_image, "--dbleak-startup-timeout=0.3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: dbleak: the {docker_test_image} container did not accept a login within 0.3 s*"]
    )
    assert "Traceback" not in all_output(result)
