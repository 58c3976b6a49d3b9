"""The leak detector catches each of the seed's bugs in the app's own tests.

For each named regression, a focused part of the functional suite runs in a
child pytest with ``--dbleak``: it passes as the app is, and fails, naming
the leak, with the regression switched on.

The same holds for the stress tests of the leak-regression suite
(``leaks/``): each regression is caught by at least one of them, with the
leak's kind and rate, and the same tests pass with no regression on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_dbleak.engine.settings import OPTIONS, Settings

from .regressions import ENV_VAR, REGRESSIONS

HERE = Path(__file__).parent
LEAKS = HERE / "leaks"

# Read before pytester points HOME elsewhere: child runs reuse this machine's
# initialised template datadir instead of building one in a fresh HOME.
TEMPLATE_CACHE = str(Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache)
MACHINE_SETTINGS = {"DBLEAK_CACHE_DIR", "DBLEAK_MYSQLD", "DBLEAK_STARTUP_TIMEOUT"}


@pytest.fixture(autouse=True)
def _child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child runs see no DBLEAK_* behaviour setting of this run, and the real template cache."""
    for spec in OPTIONS:
        if spec.env not in MACHINE_SETTINGS:
            monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setenv("DBLEAK_CACHE_DIR", os.environ.get("DBLEAK_CACHE_DIR", TEMPLATE_CACHE))
    monkeypatch.delenv(ENV_VAR, raising=False)


# regression -> (the tests that exercise it, the kind of leak the detector names)
CASES: dict[str, tuple[list[str], str]] = {
    "no_request_cleanup": (["test_api_locations.py"], "checked_out"),
    "job_without_app_context": (
        ["test_jobs.py", "-k", "each_job_runs_in_the_app_and_cleans_up"],
        "checked_out",
    ),
    "job_create_app_per_run": (
        ["test_jobs.py", "-k", "each_job_runs_in_the_app_and_cleans_up"],
        "undisposed_engine",
    ),
    "disconnect_thread_without_cleanup": (
        ["test_socketio.py", "-k", "disconnect_puts_everything_back"],
        "checked_out",
    ),
    "long_running_job_session": (["test_jobs.py", "-k", "sender_works"], "checked_out"),
}


def run(pytester: pytest.Pytester, selection: list[str]) -> pytest.RunResult:
    target, *rest = selection
    return pytester.runpytest_subprocess(
        str(HERE / target),
        *rest,
        "--dbleak",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::ResourceWarning",
        "-q",
        "-x",
    )


@pytest.mark.parametrize("name", list(CASES))
def test_the_detector_catches(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    selection, kind = CASES[name]

    monkeypatch.delenv(ENV_VAR, raising=False)
    clean = run(pytester, selection)
    assert clean.ret == pytest.ExitCode.OK, clean.stdout.str()
    clean.stdout.fnmatch_lines(["*dbleak: no leaks in * checked test*"])

    monkeypatch.setenv(ENV_VAR, name)
    broken = run(pytester, selection)
    assert broken.ret != pytest.ExitCode.OK
    broken.stdout.fnmatch_lines([f"*dbleak: * leaked (*{kind}*"])


# -- the leak-regression suite's stress tests ---------------------------------------

HTTP_LOCATIONS = "test_http_load.py::test_the_seeds_load_on_locations_two_rounds"
JOBS_CLEANUP = "test_jobs_stress.py::test_cleanup_old_logs_under_stress"
JOBS_RETRY = "test_jobs_stress.py::test_retry_failed_notifications_under_stress"
CHURN = "test_socket_churn.py::test_a_hundred_drivers_come_and_go"

# regression -> (the stress test that catches it, the line dbleak prints)
STRESS_CASES: dict[str, tuple[str, str]] = {
    # 60 = pool_size + max_overflow: then the pool is exhausted and the rest are 503s.
    "no_request_cleanup": (
        HTTP_LOCATIONS,
        "*: 60 connections leaked over 1000 runs (1 in 17) (60 checked_out) at *",
    ),
    "job_without_app_context": (
        JOBS_CLEANUP,
        "*: 50 connections leaked over 50 runs (1 in 1) (50 checked_out) at *",
    ),
    "job_create_app_per_run": (
        JOBS_CLEANUP,
        "*: 50 connections leaked over 50 runs (1 in 1) (50 undisposed_engine) at *",
    ),
    "disconnect_thread_without_cleanup": (
        CHURN,
        "*: * connections leaked over 100 runs (1 in *) (* checked_out) at *",
    ),
    # Held only while the sender works and returned when the job ends: the check
    # after the test cannot see it, the test's look during the sends does (no
    # rate: that look is dbleak.assert_no_leaks(), not the per-test check).
    "long_running_job_session": (
        JOBS_RETRY,
        "*dbleak: * leaked (* checked_out) at reference_app/tests/regressions.py:*",
    ),
}


def run_stress(pytester: pytest.Pytester, node_ids: list[str]) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *(str(LEAKS / node_id) for node_id in node_ids),
        "--dbleak",
        "--dbleak-settle-timeout=0.3",
        "-p",
        "no:cacheprovider",
        "-W",
        "error::ResourceWarning",
        "-q",
        timeout=300,
    )


def test_every_regression_has_a_stress_case() -> None:
    assert set(STRESS_CASES) == set(REGRESSIONS)


def test_the_stress_tests_pass_with_no_regression(pytester: pytest.Pytester) -> None:
    node_ids = sorted({node_id for node_id, _ in STRESS_CASES.values()})
    clean = run_stress(pytester, node_ids)
    assert clean.ret == pytest.ExitCode.OK, clean.stdout.str()
    clean.stdout.fnmatch_lines([f"*dbleak: no leaks in {len(node_ids)} checked tests*"])


@pytest.mark.parametrize("name", list(STRESS_CASES))
def test_a_stress_test_catches(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    node_id, line = STRESS_CASES[name]
    monkeypatch.setenv(ENV_VAR, name)
    broken = run_stress(pytester, [node_id])
    assert broken.ret in (pytest.ExitCode.TESTS_FAILED, 6), broken.stdout.str()
    broken.stdout.fnmatch_lines([f"FAILED *{node_id}*"])
    broken.stdout.fnmatch_lines([line])


# -- the same job bugs on a multi-process run ------------------------------------------

PROCESSES = "test_processes.py::test_a_job_run_on_three_processes_keeps_no_connection"

# Each run leaves a connection in whichever of the three processes ran it: the
# plugin sees them as server connections that no pool of the test's process owns.
MULTIPROCESS_CASES = ["job_without_app_context", "job_create_app_per_run"]


def test_the_multi_process_run_passes_with_no_regression(pytester: pytest.Pytester) -> None:
    clean = run_stress(pytester, [PROCESSES])
    assert clean.ret == pytest.ExitCode.OK, clean.stdout.str()
    clean.stdout.fnmatch_lines(["*dbleak: no leaks in 1 checked test*"])


@pytest.mark.parametrize("name", MULTIPROCESS_CASES)
def test_the_multi_process_run_catches(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(ENV_VAR, name)
    broken = run_stress(pytester, [PROCESSES])
    assert broken.ret in (pytest.ExitCode.TESTS_FAILED, 6), broken.stdout.str()
    broken.stdout.fnmatch_lines([f"FAILED *{PROCESSES}*"])
    broken.stdout.fnmatch_lines(["*dbleak: * connections leaked (* server_connection)*"])
