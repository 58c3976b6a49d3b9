"""Markers tune or skip the check; a mistake in a marker or an option is a one-line usage
error; settings come from the CLI, then the environment, then the ini file."""

from __future__ import annotations

import json
import secrets
import socket

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
    result.stdout.fnmatch_lines([
        "PASSED test_marks.py::test_one_leak_allowed_one_made",
        "PASSED test_marks.py::test_a_long_settle_waits_for_a_late_return",
        "PASSED test_marks.py::test_not_checked",
        "FAILED test_marks.py::test_one_leak_allowed_two_made - *",
        "FAILED test_marks.py::test_no_settle_does_not_wait_for_a_late_return - *",
    ])
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
    result.stdout.fnmatch_lines([
        "test_marks.py::test_one_leak_allowed_one_made: 1 connection leaked "
        "(1 server_connection) at test_marks.py:* [[]within allow=1]",
    ])

    tests = {t["nodeid"].split("::")[1]: t for t in json.loads(
        (pytester.path / "r.json").read_text())["tests"]}
    assert "test_not_checked" not in tests  # no check, no entry
    late = tests["test_a_long_settle_waits_for_a_late_return"]
    assert late["leaks"] == []
    assert 0 < late["waited"] < 10
    assert tests["test_no_settle_does_not_wait_for_a_late_return"]["waited"] == 0


AFTER_UNCHECKED = '''
@pytest.mark.no_dbleak
def test_not_checked_and_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


def test_clean_after_an_unchecked_leak(dbleak_mysql_url):
    pass
'''


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
        "keyword argument 'alow'",
    ),
    "negative_allow_in_marker": (
        "@pytest.mark.dbleak(allow=-1)",
        [PROCESS],
        "ERROR: dbleak: test_usage.py::test_marked: @pytest.mark.dbleak: allow must be a "
        "whole number >= 0, got -1",
    ),
    "unknown_backend": (
        "", ["--dbleak-backend=bogus"],
        "ERROR: dbleak: --dbleak-backend: unknown backend 'bogus'; choose one of *",
    ),
    "negative_settle_timeout": (
        "", [PROCESS, "--dbleak-settle-timeout=-1"],
        "ERROR: dbleak: --dbleak-settle-timeout: expected a number >= 0, got '-1'",
    ),
    "postgresql_url": (
        "", ["--dbleak-backend=url", "--dbleak-mysql-url=postgresql://u:pw@127.0.0.1/db"],
        "ERROR: dbleak: --dbleak-mysql-url: a mysql:// or mariadb:// URL is needed, got "
        "postgresql://",
    ),
    "unreachable_url": (
        "", ["--dbleak-backend=url", "--dbleak-mysql-url=mysql://root@127.0.0.1:{free_port}"],
        "ERROR: dbleak: MySQL server at 127.0.0.1:{free_port} cannot be reached [url backend]",
    ),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_configuration_mistake_is_a_one_line_usage_error(
    pytester: pytest.Pytester, case: str
) -> None:
    decorator, args, expected = USAGE_ERRORS[case]
    port = str(_free_port())
    args = [a.replace("{free_port}", port) for a in args]
    pytester.makepyfile(test_usage=f"import pytest\n\n{decorator}\ndef test_marked():\n    pass\n")

    result = pytester.runpytest_subprocess("--dbleak", *args, *ONLY_DBLEAK)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in all_output(result).splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, all_output(result)
    pytest.LineMatcher(errors).fnmatch_lines([expected.replace("{free_port}", port)])
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
    result.stderr.fnmatch_lines([
        "ERROR: dbleak: MySQL server at *:* refused the login (wrong user or password) "
        "[[]url backend]",
    ])
    assert password not in all_output(result)
    assert "Traceback" not in all_output(result)


PRECEDENCE = '''
def test_leaks_one(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
'''


@pytest.mark.parametrize(
    ("ini", "env", "cli", "outcome", "report"),
    [
        pytest.param({}, {}, {}, "failed", None, id="default"),
        pytest.param({"allow": "1", "report": "ini.json"}, {}, {}, "passed", "ini.json",
                     id="ini_over_default"),
        pytest.param({"allow": "1", "report": "ini.json"},
                     {"DBLEAK_ALLOW": "0", "DBLEAK_REPORT": "env.json"}, {},
                     "failed", "env.json", id="env_over_ini"),
        pytest.param({"allow": "1", "report": "ini.json"},
                     {"DBLEAK_ALLOW": "0", "DBLEAK_REPORT": "env.json"},
                     {"allow": "1", "report": "cli.json"}, "passed", "cli.json",
                     id="cli_over_env"),
    ],
)
def test_settings_come_from_the_cli_then_the_environment_then_the_ini_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
    ini: dict[str, str], env: dict[str, str], cli: dict[str, str], outcome: str,
    report: str | None,
) -> None:
    pytester.makeini("[pytest]\n" + "".join(f"dbleak_{k} = {v}\n" for k, v in ini.items()))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_precedence=PREAMBLE + PRECEDENCE)

    result = pytester.runpytest_subprocess(
        "--dbleak", PROCESS, FAST, *ONLY_DBLEAK,
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
