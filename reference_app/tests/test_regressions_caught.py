"""The leak detector catches each of the seed's bugs in the app's own tests.

For each named regression, a focused part of the functional suite runs in a
child pytest with ``--dbleak``: it passes as the app is, and fails, naming
the leak, with the regression switched on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_app.regressions import ENV_VAR

HERE = Path(__file__).parent

# regression -> (the tests that exercise it, the kind of leak the detector names)
CASES: dict[str, tuple[list[str], str]] = {
    "no_request_cleanup": (["test_api_locations.py"], "checked_out"),
    "job_without_app_context": (["test_jobs.py", "-k", "cleans_up"], "checked_out"),
    "job_create_app_per_run": (["test_jobs.py", "-k", "cleans_up"], "undisposed_engine"),
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
    clean.stdout.fnmatch_lines(["*dbleak: no leaks in * tests*"])

    monkeypatch.setenv(ENV_VAR, name)
    broken = run(pytester, selection)
    assert broken.ret != pytest.ExitCode.OK
    broken.stdout.fnmatch_lines([f"*dbleak: * leaked (*{kind}*"])
