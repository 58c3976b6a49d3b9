"""Markers tune or skip the check; a mistake in a marker or an option is a one-line usage
error; settings come from the CLI, then the environment, then the ini file."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, all_output, failure_of

PROCESS = "--dbleak-backend=process"

MARKERS = '''
import time

RELEASE = threading.Event()


def return_later(engine, when):
    """A worker thread that gives its connection back once `when()` returns."""
    conn = engine.connect()

    def later():
        when()
        conn.close()

    threading.Thread(target=later, daemon=True).start()


@pytest.mark.dbleak(allow=1)
def test_one_leak_allowed_one_made(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


@pytest.mark.dbleak(allow=1)
def test_one_leak_allowed_two_made(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


@pytest.mark.dbleak(settle=0)
def test_no_settle_does_not_wait_for_a_late_return(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    return_later(engine, lambda: RELEASE.wait(30))  # released by the next test


@pytest.mark.dbleak(settle=10)
def test_a_long_settle_waits_for_a_late_return(dbleak_mysql_url):
    RELEASE.set()
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    return_later(engine, lambda: time.sleep(0.3))


# Last: a leak in an unchecked test must not be blamed on the next test.
@pytest.mark.no_dbleak
def test_not_checked(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
'''


def test_markers_skip_the_check_tolerate_leaks_and_set_the_settle_time(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_marks=PREAMBLE + MARKERS)
    result = pytester.runpytest_subprocess(
        "--dbleak", PROCESS, FAST, *ONLY_DBLEAK, "-rA", "--dbleak-report=r.json"
    )
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_marks.py::test_one_leak_allowed_one_made",
            "PASSED test_marks.py::test_a_long_settle_waits_for_a_late_return",
            "PASSED test_marks.py::test_not_checked",
            "FAILED test_marks.py::test_one_leak_allowed_two_made - *",
            "FAILED test_marks.py::test_no_settle_does_not_wait_for_a_late_return - *",
        ]
    )
    failure_of(result, "test_one_leak_allowed_two_made").fnmatch_lines(
        ["dbleak: 2 connections leaked, 1 allowed (2 server_connection) at test_marks.py:*"]
    )
    failure_of(result, "test_no_settle_does_not_wait_for_a_late_return").fnmatch_lines(
        ["dbleak: 1 connection leaked (1 checked_out) at test_marks.py:*"]
    )
    # A tolerated leak is still shown, and listed as tolerated.
    failure_of(result, "test_one_leak_allowed_one_made").fnmatch_lines(
        ["*- dbleak -*", "dbleak: 1 connection leaked, 1 allowed (1 server_connection)*"]
    )
    result.stdout.fnmatch_lines(
        [
            "test_marks.py::test_one_leak_allowed_one_made: 1 connection leaked "
            "(1 server_connection) at test_marks.py:* [[]within allow=1]",
        ]
    )

    tests = {
        t["nodeid"].split("::")[1]: t
        for t in json.loads((pytester.path / "r.json").read_text())["tests"]
    }
    assert "test_not_checked" not in tests  # no check, no entry
    late = tests["test_a_long_settle_waits_for_a_late_return"]
    assert late["leaks"] == []
    assert 0 < late["waited"] < 10
    assert tests["test_no_settle_does_not_wait_for_a_late_return"]["waited"] == 0


AFTER_UNCHECKED = """
@pytest.mark.no_dbleak
def test_not_checked_and_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


def test_clean_after_an_unchecked_leak(dbleak_mysql_url):
    pass
"""


def test_a_leak_in_a_test_marked_no_dbleak_is_not_blamed_on_the_next_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_after=PREAMBLE + AFTER_UNCHECKED)
    result = pytester.runpytest_subprocess("--dbleak", PROCESS, FAST, *ONLY_DBLEAK)
    result.assert_outcomes(passed=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


USAGE_ERRORS = {
    "marker_keyword_typo": (
        "@pytest.mark.dbleak(alow=1)",
        [PROCESS],
        "ERROR: dbleak: test_usage.py::test_marked: @pytest.mark.dbleak: got an unexpected "
        "keyword argument 'alow'; did you mean 'allow'?",
    ),
    "misspelt_marker_name": (
        "@pytest.mark.dbleak_job(runs=3)",
        [PROCESS],
        "ERROR: dbleak: test_usage.py::test_marked: @pytest.mark.dbleak_job is not a marker of "
        "pytest-dbleak; did you mean @pytest.mark.dbleak_jobs?",
    ),
    "negative_allow_in_marker": (
        "@pytest.mark.dbleak(allow=-1)",
        [PROCESS],
        "ERROR: dbleak: test_usage.py::test_marked: @pytest.mark.dbleak: allow must be a "
        "whole number >= 0, got -1",
    ),
    "unknown_backend": (
        "",
        ["--dbleak-backend=bogus"],
        "ERROR: dbleak: --dbleak-backend: unknown backend 'bogus'; choose one of *",
    ),
    "negative_settle_timeout": (
        "",
        [PROCESS, "--dbleak-settle-timeout=-1"],
        "ERROR: dbleak: --dbleak-settle-timeout: expected a number of seconds >= 0, got '-1'",
    ),
    "allow_not_a_number": (
        "",
        [PROCESS, "--dbleak-allow=abc"],
        "ERROR: dbleak: --dbleak-allow: expected a whole number >= 0, got 'abc'",
    ),
    "zero_startup_timeout": (
        "",
        [PROCESS, "--dbleak-startup-timeout=0"],
        "ERROR: dbleak: --dbleak-startup-timeout: expected a number of seconds > 0, got '0'",
    ),
    "cache_dir_is_a_file": (
        "",
        [PROCESS, "--dbleak-cache-dir={file}"],
        "ERROR: dbleak: the template cache folder {file} cannot be used: it is a file, not a "
        "folder; choose another with --dbleak-cache-dir",
    ),
    "cache_dir_under_proc": (
        "",
        [PROCESS, "--dbleak-cache-dir=/proc/dbleak-cache"],
        "ERROR: dbleak: the template cache folder /proc/dbleak-cache cannot be used: cannot "
        "create it under /proc (No such file or directory); choose another with "
        "--dbleak-cache-dir",
    ),
    "postgresql_url": (
        "",
        ["--dbleak-backend=url", "--dbleak-mysql-url=postgresql://u:pw@127.0.0.1/db"],
        "ERROR: dbleak: --dbleak-mysql-url: a mysql:// or mariadb:// URL is needed, got "
        "postgresql://",
    ),
    "unreachable_url": (
        "",
        ["--dbleak-backend=url", "--dbleak-mysql-url=mysql://root@127.0.0.1:{free_port}"],
        "ERROR: dbleak: MySQL server at 127.0.0.1:{free_port} cannot be reached [url backend]",
    ),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_configuration_mistake_is_a_one_line_usage_error(
    pytester: pytest.Pytester, case: str
) -> None:
    decorator, args, expected = USAGE_ERRORS[case]
    a_file = pytester.path / "a-file"
    a_file.write_text("not a folder\n")
    given = {"{free_port}": str(_free_port()), "{file}": str(a_file)}
    for placeholder, value in given.items():
        args = [a.replace(placeholder, value) for a in args]
        expected = expected.replace(placeholder, value)
    pytester.makepyfile(test_usage=f"import pytest\n\n{decorator}\ndef test_marked():\n    pass\n")

    result = pytester.runpytest_subprocess("--dbleak", *args, *ONLY_DBLEAK)

    assert_one_usage_error(result, expected)


def assert_one_usage_error(result: pytest.RunResult, expected: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, all_output(result)
    errors = [line for line in all_output(result).splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, all_output(result)
    pytest.LineMatcher(errors).fnmatch_lines([expected])
    assert "Traceback" not in all_output(result)
    assert "INTERNALERROR" not in all_output(result)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An empty folder nobody can write in: root too (the immutable attribute)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a folder read-only")
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_cache_folder_is_a_one_line_usage_error(
    pytester: pytest.Pytester, read_only_folder: Path
) -> None:
    pytester.makepyfile(test_usage="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--dbleak", PROCESS, f"--dbleak-cache-dir={read_only_folder}", *ONLY_DBLEAK
    )
    assert_one_usage_error(
        result,
        f"ERROR: dbleak: the template cache folder {read_only_folder} cannot be used: "
        "cannot write in it (*); choose another with --dbleak-cache-dir",
    )


BAD_MARKERS = """
import pytest


@pytest.mark.dbleak(alow=1)
def test_typo():
    pass


@pytest.mark.dbleak_http_load(requests=0)
def test_zero_requests():
    pass


@pytest.mark.no_dbleaks
def test_misspelt_name():
    pass


@pytest.mark.dbleak_jobs(run=3)
class TestJobs:
    def test_one(self):
        pass

    def test_two(self):
        pass


@pytest.mark.dbleak(allow=1)
def test_fine():
    pass
"""


def test_every_bad_marker_of_a_run_is_listed_at_once_one_line_each(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_markers=BAD_MARKERS)
    result = pytester.runpytest_subprocess(*ONLY_DBLEAK)  # also without --dbleak
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in all_output(result).splitlines() if line.startswith("ERROR")]
    assert errors == [
        "ERROR: dbleak: test_markers.py::test_typo: @pytest.mark.dbleak: got an unexpected "
        "keyword argument 'alow'; did you mean 'allow'?",
        "ERROR: dbleak: test_markers.py::test_zero_requests: @pytest.mark.dbleak_http_load: "
        "requests must be a whole number >= 1, got 0",
        "ERROR: dbleak: test_markers.py::test_misspelt_name: @pytest.mark.no_dbleaks is not a "
        "marker of pytest-dbleak; did you mean @pytest.mark.no_dbleak?",
        "ERROR: dbleak: test_markers.py::TestJobs::test_one (and 1 more test): "
        "@pytest.mark.dbleak_jobs: got an unexpected keyword argument 'run'; did you mean "
        "'runs'?",
    ], all_output(result)
    assert "Traceback" not in all_output(result)


def test_a_wrong_password_is_a_usage_error_that_never_shows_the_password(
    pytester: pytest.Pytester, local_mysql_url: str
) -> None:
    password = "pw-" + secrets.token_hex(8)
    from sqlalchemy.engine import make_url

    url = make_url(local_mysql_url).set(password=password).render_as_string(hide_password=False)
    pytester.makepyfile(test_pw="def test_x():\n    pass\n")

    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=url", f"--dbleak-mysql-url={url}", *ONLY_DBLEAK
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: dbleak: MySQL server at *:* refused the login (wrong user or password) "
            "[[]url backend]",
        ]
    )
    assert password not in all_output(result)
    assert "Traceback" not in all_output(result)


PRECEDENCE = """
def test_leaks_one(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""


@pytest.mark.parametrize(
    ("ini", "env", "cli", "outcome", "report"),
    [
        pytest.param({}, {}, {}, "failed", None, id="default"),
        pytest.param(
            {"allow": "1", "report": "ini.json"},
            {},
            {},
            "passed",
            "ini.json",
            id="ini_over_default",
        ),
        pytest.param(
            {"allow": "1", "report": "ini.json"},
            {"DBLEAK_ALLOW": "0", "DBLEAK_REPORT": "env.json"},
            {},
            "failed",
            "env.json",
            id="env_over_ini",
        ),
        pytest.param(
            {"allow": "1", "report": "ini.json"},
            {"DBLEAK_ALLOW": "0", "DBLEAK_REPORT": "env.json"},
            {"allow": "1", "report": "cli.json"},
            "passed",
            "cli.json",
            id="cli_over_env",
        ),
    ],
)
def test_settings_come_from_the_cli_then_the_environment_then_the_ini_file(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: dict[str, str],
    env: dict[str, str],
    cli: dict[str, str],
    outcome: str,
    report: str | None,
) -> None:
    pytester.makeini("[pytest]\n" + "".join(f"dbleak_{k} = {v}\n" for k, v in ini.items()))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_precedence=PREAMBLE + PRECEDENCE)

    result = pytester.runpytest_subprocess(
        "--dbleak",
        PROCESS,
        FAST,
        *ONLY_DBLEAK,
        *(f"--dbleak-{k}={v}" for k, v in cli.items()),
    )

    result.assert_outcomes(**{outcome: 1})
    written = sorted(p.name for p in pytester.path.glob("*.json"))
    assert written == ([report] if report else [])


def test_the_check_can_be_switched_on_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndbleak_enabled = true\ndbleak_backend = process\n")
    pytester.makepyfile(test_ini=PREAMBLE + PRECEDENCE)
    result = pytester.runpytest_subprocess(FAST, *ONLY_DBLEAK)
    result.assert_outcomes(failed=1)


def test_no_dbleak_on_the_command_line_switches_off_an_ini_dbleak_enabled(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ndbleak_enabled = true\ndbleak_backend = process\n")
    pytester.makepyfile(test_ini=PREAMBLE + PRECEDENCE)
    off = pytester.runpytest_subprocess(FAST, *ONLY_DBLEAK, "--no-dbleak")
    off.assert_outcomes(passed=1)
    off.stdout.no_fnmatch_line("*dbleak: no leaks*")
    # The same run without it fails the leaky test.
    on = pytester.runpytest_subprocess(FAST, *ONLY_DBLEAK)
    on.assert_outcomes(failed=1)


STRESS_WITHOUT_ITS_EXTRA = """
import sys

import pytest

sys.modules["werkzeug"] = None  # as if the stress extra were not installed: import fails


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.dbleak_http_load(requests=2, concurrency=1)
def test_load(dbleak_http_load):
    dbleak_http_load.run(app, "/")
"""


def test_a_stress_fixture_without_its_extra_names_the_extra_in_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_stress=STRESS_WITHOUT_ITS_EXTRA)
    result = pytester.runpytest_subprocess(*ONLY_DBLEAK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, all_output(result)
    lines = [line for line in all_output(result).splitlines() if "needs the stress extra" in line]
    assert lines, all_output(result)
    pytest.LineMatcher(lines).fnmatch_lines(
        [
            "*dbleak: dbleak_http_load needs the stress extra: "
            "pip install 'pytest-dbleak[[]stress]' "
            "(no module named 'werkzeug')*",
        ]
    )
    assert "Traceback" not in all_output(result)
    assert "ModuleNotFoundError" not in all_output(result)
    # The same test, with Werkzeug importable, runs its load.
    pytester.makepyfile(
        test_stress=STRESS_WITHOUT_ITS_EXTRA.replace('sys.modules["werkzeug"] = None', "pass")
    )
    pytester.runpytest_subprocess(*ONLY_DBLEAK).assert_outcomes(passed=1)
