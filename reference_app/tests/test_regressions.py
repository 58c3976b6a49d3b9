"""The named-regression switch: off by default, on by name, unknown names refused."""

from __future__ import annotations

import pytest
from flask import Flask

from reference_app import regressions
from reference_app.config import ConfigError
from reference_app.jobs import JOBS
from reference_app.regressions import ENV_VAR, REGRESSIONS, parse_regressions
from reference_app.tasks import run_in_app_context

from .support import AppFactory

NAMES = [
    "no_request_cleanup",
    "job_without_app_context",
    "job_create_app_per_run",
    "disconnect_thread_without_cleanup",
    "long_running_job_session",
]


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
    with pytest.raises(ConfigError) as caught:
        parse_regressions("no_request_cleanup,typo")
    assert caught.value.message.startswith("unknown regression(s): typo; known: no_request_cleanup")


def test_off_by_default(monkeypatch: pytest.MonkeyPatch, make_app: AppFactory) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    app: Flask = make_app()
    assert app.config["REGRESSIONS"] == frozenset()
    assert regressions.job_runner(app) is None
    assert all(regressions.job_body(app, name) is None for name in JOBS)
    assert regressions.disconnect_task_runner(app) is None


def test_the_environment_switches_them_on(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv(ENV_VAR, "job_without_app_context,disconnect_thread_without_cleanup")
    app: Flask = make_app()
    assert app.config["REGRESSIONS"] == {
        "job_without_app_context",
        "disconnect_thread_without_cleanup",
    }
    assert regressions.job_runner(app) is regressions.run_job_without_cleanup
    assert regressions.disconnect_task_runner(app) is regressions.run_in_context_never_popped
    assert regressions.disconnect_task_runner(app) is not run_in_app_context


def test_config_switches_them_on(monkeypatch: pytest.MonkeyPatch, make_app: AppFactory) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    app: Flask = make_app(REGRESSIONS={"job_create_app_per_run", "long_running_job_session"})
    assert regressions.job_runner(app) is regressions.run_job_in_new_app
    body = regressions.job_body(app, "retry_failed_notifications")
    assert body is regressions.retry_notifications_in_one_session
    assert regressions.job_body(app, "cleanup_old_logs") is None


def test_no_request_cleanup_removes_every_teardown(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv(ENV_VAR, "no_request_cleanup")
    app: Flask = make_app()
    assert [f.__name__ for f in app.teardown_appcontext_funcs] == []
    assert app.teardown_request_funcs.get(None, []) == []


def test_an_unknown_name_in_the_environment_stops_the_factory(
    monkeypatch: pytest.MonkeyPatch,
    make_app: AppFactory,
) -> None:
    monkeypatch.setenv(ENV_VAR, "no_request_cleanup,nonsense")
    with pytest.raises(ConfigError, match="unknown regression"):
        make_app()
