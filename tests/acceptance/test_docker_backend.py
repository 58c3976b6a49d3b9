"""The docker backend: selection and errors here; the real container where Docker runs."""

from __future__ import annotations

import pytest

from pytest_dbleak.backends import docker_available
from tests.acceptance.helpers import FAST, PREAMBLE, all_output

needs_docker = pytest.mark.skipif(
    not docker_available(), reason="needs a running Docker daemon (docker backend)"
)

LEAKY_AND_CLEAN = PREAMBLE + '''

def test_clean(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
'''


@pytest.mark.skipif(docker_available(), reason="a Docker daemon answers here")
def test_the_docker_backend_without_a_daemon_is_one_usage_error_that_names_docker(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: dbleak: the docker backend needs a running Docker daemon*"]
    )
    assert "Traceback" not in all_output(result)


@pytest.mark.skipif(docker_available(), reason="a Docker daemon answers here")
def test_auto_falls_back_to_the_process_backend_when_no_daemon_answers(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_it="def test_backend(dbleak_server):\n"
                                "    assert dbleak_server.backend == 'process'\n")
    pytester.runpytest_subprocess("--dbleak-backend=auto").assert_outcomes(passed=1)


@needs_docker
def test_the_docker_backend_fails_a_leaky_test_and_passes_its_clean_twin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_it=LEAKY_AND_CLEAN)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=docker", "--dbleak-image=mysql:8.4", FAST, timeout=600
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_leaky - dbleak: 1 connection leaked*"])
