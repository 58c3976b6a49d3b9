"""The seed's bugs, installed from outside: off by default, on by name, unknown names refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from reference_app import session_cleanup
from reference_app.jobs import JOBS, get_jobs, run_in_job_context
from reference_app.tasks import get_tasks, run_in_app_context

from . import regressions
from .regressions import ENV_VAR, REGRESSIONS, UnknownRegression, parse_regressions
from .support import AppFactory

NAMES = [
    "no_request_cleanup",
    "job_without_app_context",
    "job_create_app_per_run",
    "disconnect_thread_without_cleanup",
    "long_running_job_session",
]
ROOT = Path(__file__).resolve().parents[2]


def test_the_five_seed_bugs_are_named_and_described() -> None:
    assert list(REGRESSIONS) == NAMES
    assert all(len(text) > 40 for text in REGRESSIONS.values())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, set()),
        ("", set()),
        (" , ", set()),
        ("no_request_cleanup", {"no_request_cleanup"}),
        (
            " job_create_app_per_run ,long_running_job_session",
            {"job_create_app_per_run", "long_running_job_session"},
        ),
        (["job_without_app_context"], {"job_without_app_context"}),
    ],
)
def test_parse(value: object, expected: set[str]) -> None:
    assert parse_regressions(value) == expected  # type: ignore[arg-type]


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownRegression) as caught:
        parse_regressions("no_request_cleanup,typo")
    assert str(caught.value).startswith("unknown regression(s): typo; known: no_request_cleanup")


def test_off_by_default(monkeypatch: pytest.MonkeyPatch, make_app: AppFactory) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    app: Flask = make_app()
    jobs = get_jobs(app)
    assert jobs.runner is run_in_job_context
    assert jobs.bodies == JOBS
    assert get_tasks(app).runner is run_in_app_context
    assert session_cleanup.shutdown_session in app.teardown_appcontext_funcs
    assert session_cleanup.rollback_failed_request in app.teardown_request_funcs[None]


def test_install_replaces_the_pieces_through_the_apps_seams(make_app: AppFactory) -> None:
    app: Flask = make_app(
        regressions_on={"job_without_app_context", "disconnect_thread_without_cleanup"}
    )
    assert get_jobs(app).runner is regressions.run_job_without_cleanup
    assert get_tasks(app).runner is regressions.run_in_context_never_popped

    other: Flask = make_app(regressions_on={"job_create_app_per_run", "long_running_job_session"})
    jobs = get_jobs(other)
    assert jobs.runner is regressions.run_job_in_new_app
    assert jobs.bodies["retry_failed_notifications"] is (
        regressions.retry_notifications_in_one_session
    )
    assert jobs.bodies["cleanup_old_logs"] is JOBS["cleanup_old_logs"]
    # One app's regressions never reach another app.
    assert get_jobs(app).bodies == JOBS


def test_the_environment_switches_them_on(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv(ENV_VAR, "job_without_app_context")
    assert get_jobs(make_app()).runner is regressions.run_job_without_cleanup


def test_no_request_cleanup_removes_every_teardown(make_app: AppFactory) -> None:
    app: Flask = make_app(regressions_on={"no_request_cleanup"})
    assert [f.__name__ for f in app.teardown_appcontext_funcs] == []
    assert app.teardown_request_funcs.get(None, []) == []


def test_an_unknown_name_in_the_environment_is_a_usage_error() -> None:
    env = {**os.environ, ENV_VAR: "no_request_cleanup,nonsense", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", __file__, "-k", "test_parse"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{ENV_VAR}: unknown regression(s): nonsense; known: " in result.stderr
