"""Trust at scale: xdist verdicts, no orphaned servers, a dying server, leaked locks,
masked passwords. Each scenario runs a real pytest in a subprocess against a real server.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbleak.families.mysql.family import parse_mysql_url
from tests.acceptance.helpers import FAST, PREAMBLE, all_output

SCENARIOS = (
    PREAMBLE
    + """

@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


def test_clean_one(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_checks_out_and_keeps(engine):
    KEEP.append(engine.connect())


def test_clean_two(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_raw_connection_left_open(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


def test_engine_never_disposed(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    KEEP.append(engine)


@pytest.mark.parametrize("n", range(6))
def test_clean_many(engine, n):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
"""
)


def _verdicts(report: Path) -> dict[str, tuple[str, int]]:
    data = json.loads(report.read_text())
    return {t["nodeid"]: (t["outcome"], t["leaked"]) for t in data["tests"]}


def test_xdist_with_two_workers_gives_the_same_verdicts_as_a_serial_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    serial = pytester.runpytest_subprocess("--dbleak", FAST, "--dbleak-report=serial.json")
    parallel = pytester.runpytest_subprocess(
        "--dbleak", FAST, "-n", "2", "--dbleak-report=parallel.json"
    )
    serial.assert_outcomes(passed=8, failed=3)
    parallel.assert_outcomes(passed=8, failed=3)
    expected = _verdicts(pytester.path / "serial.json")
    assert _verdicts(pytester.path / "parallel.json") == expected
    assert sorted(n for n, (outcome, _) in expected.items() if outcome == "failed") == [
        "test_scenarios.py::test_checks_out_and_keeps",
        "test_scenarios.py::test_engine_never_disposed",
        "test_scenarios.py::test_raw_connection_left_open",
    ]
    # The controller merges the terminal summary of both workers.
    parallel.stdout.fnmatch_lines(["*dbleak: 3 tests leaked connections*"])


# -- no orphaned servers ---------------------------------------------------------------
WAIT_FOR_SIGNAL = """
import json, os, time

def test_waits_to_be_killed(dbleak_server, dbleak_mysql_url):
    # Tell the outer test where the server lives, then wait to be killed.
    with open(os.environ["DBLEAK_TEST_HANDSHAKE"] + ".tmp", "w") as f:
        json.dump({"socket": dbleak_server.socket}, f)
    os.replace(os.environ["DBLEAK_TEST_HANDSHAKE"] + ".tmp", os.environ["DBLEAK_TEST_HANDSHAKE"])
    time.sleep(120)
"""


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _processes_using(path: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline and ("mariadbd" in cmdline or "mysqld" in cmdline):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def running_inner_session(
    pytester: pytest.Pytester,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """An inner pytest (process backend) that is inside a test; yields it and its datadir."""
    pytester.makepyfile(test_wait=WAIT_FOR_SIGNAL)
    handshake = pytester.path / "handshake.json"
    env = dict(os.environ, DBLEAK_TEST_HANDSHAKE=str(handshake))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--dbleak",
            "--dbleak-backend=process",
            "test_wait.py",
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(handshake.exists, 60, "the inner test to start")
        root = str(Path(json.loads(handshake.read_text())["socket"]).parent)
        assert _processes_using(root), "the inner session's server is not running"
        yield proc, root
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGKILL, "SIGKILL"), (signal.SIGINT, "Ctrl-C")])
def test_a_killed_or_interrupted_pytest_leaves_no_server_and_no_datadir_behind(
    running_inner_session: tuple[subprocess.Popen[bytes], str], sig: int, how: str
) -> None:
    proc, root = running_inner_session
    proc.send_signal(sig)
    proc.wait(timeout=60)
    _wait_for(lambda: not _processes_using(root), 30, f"the server to stop after {how}")
    _wait_for(lambda: not os.path.exists(root), 30, f"the datadir to go after {how}")


SERVER_DIES = """
import os, signal
import pytest
import sqlalchemy as sa


def test_kills_the_server(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        pid_file = conn.execute(sa.text("SELECT @@pid_file")).scalar()
    engine.dispose()
    os.kill(int(open(pid_file).read()), signal.SIGKILL)


def test_after_the_server_died(dbleak_mysql_url):
    pass


def test_much_later(dbleak_mysql_url):
    pass
"""


def test_a_server_that_dies_mid_run_ends_the_run_with_a_clear_message_and_no_hang(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_dies=SERVER_DIES)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, timeout=120
    )
    assert result.ret not in (0, 6)
    result.stdout.fnmatch_lines(["*dbleak: the MySQL server at 127.0.0.1:* stopped answering*"])
    result.stdout.fnmatch_lines(["*stopping the run*"])
    assert "test_much_later PASSED" not in result.stdout.str()


LEAKED_LOCK = (
    PREAMBLE
    + """

def test_holds_a_metadata_lock_forever(dbleak_mysql_url):
    conn = pymysql.connect(**connect_args(dbleak_mysql_url))
    cur = conn.cursor()
    cur.execute("CREATE TABLE t (id INT) ENGINE=InnoDB")
    cur.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    cur.execute("SELECT * FROM t")  # autocommit off: the transaction holds the table's lock
    KEEP.append(conn)
"""
)


def test_a_leaked_lock_never_makes_the_plugins_teardown_hang(
    pytester: pytest.Pytester, local_mysql_url: str
) -> None:
    pytester.makepyfile(test_lock=LEAKED_LOCK)
    # A teardown that hangs on the lock never ends: the subprocess timeout fails the test
    # (DROP DATABASE would wait lock_wait_timeout, a day by default).
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={local_mysql_url}",
        FAST,
        "--dbleak-report=r.json",
        timeout=120,
    )
    result.assert_outcomes(failed=1)
    database = json.loads((pytester.path / "r.json").read_text())["tests"][0]["leaks"][0][
        "processlist"
    ][0]["db"]
    admin = parse_mysql_url(local_mysql_url).connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (database,))
            assert cur.fetchall() == (), f"{database} was left on the server"
    finally:
        admin.close()


# -- passwords never printed ----------------------------------------------------------
@pytest.fixture
def admin_with_password(local_mysql_url: str) -> Iterator[tuple[str, str]]:
    """A throw-away administrator with a long password on the machine's MariaDB."""
    endpoint = parse_mysql_url(local_mysql_url)
    user, password = f"dbleaktest_{secrets.token_hex(3)}", f"pw-{secrets.token_hex(12)}"
    root = endpoint.connect()
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION")
        url = f"mysql://{user}:{password}@{endpoint.host}:{endpoint.port}"
        yield url, password
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        root.close()


def test_the_password_is_masked_in_messages_summary_json_html_and_junit(
    pytester: pytest.Pytester, admin_with_password: tuple[str, str]
) -> None:
    url, password = admin_with_password
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={url}",
        FAST,
        "--dbleak-report=r.json",
        "--dbleak-html=r.html",
        "--junitxml=j.xml",
        "-rA",
    )
    result.assert_outcomes(passed=8, failed=3)
    texts = {"output": all_output(result)}
    for name in ("r.json", "r.html", "j.xml"):
        texts[name] = (pytester.path / name).read_text()
    for where, text in texts.items():
        assert password not in text, f"the password appears in {where}"

    wrong = url.replace(password, password[:-1] + "x")
    refused = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=url", f"--dbleak-mysql-url={wrong}"
    )
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["ERROR: dbleak: MySQL server at * refused the login*"])
    assert password[:-1] not in all_output(refused)
    assert "Traceback" not in all_output(refused)


def test_leak_only_failures_exit_with_6_and_other_failures_with_1(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    leaks_only = pytester.runpytest_subprocess("--dbleak", FAST)
    assert leaks_only.ret == 6
    pytester.makepyfile(test_broken="def test_broken():\n    assert False\n")
    mixed = pytester.runpytest_subprocess("--dbleak", FAST)
    assert mixed.ret == pytest.ExitCode.TESTS_FAILED


def test_report_only_mode_reports_leaks_and_fails_no_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = pytester.runpytest_subprocess("--dbleak", FAST, "--dbleak-report-only")
    result.assert_outcomes(passed=11)
    result.stdout.fnmatch_lines(["*dbleak: 3 tests leaked connections*", "*[[]reported only[]]*"])


def test_a_baseline_run_fails_only_on_new_or_larger_leaks_and_says_which_are_gone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    # Recording behaves like a normal run; report-only makes it green.
    record = pytester.runpytest_subprocess(
        "--dbleak", FAST, "--dbleak-baseline=base.json", "--dbleak-report-only"
    )
    record.assert_outcomes(passed=11)
    record.stdout.fnmatch_lines(["*baseline: recorded 3 leaking tests*"])

    # Same leaks: nothing fails.
    same = pytester.runpytest_subprocess("--dbleak", FAST, "--dbleak-baseline=base.json")
    same.assert_outcomes(passed=11)

    # One leak fixed, one new leak in a clean test: only the new one fails.
    changed = SCENARIOS.replace(
        "    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))",
        "    pymysql.connect(**connect_args(dbleak_mysql_url)).close()",
    ).replace(
        "def test_clean_two(engine):\n",
        "def test_clean_two(engine):\n    KEEP.append(engine.connect())\n",
    )
    pytester.makepyfile(test_scenarios=changed)
    gated = pytester.runpytest_subprocess("--dbleak", FAST, "--dbleak-baseline=base.json")
    gated.assert_outcomes(passed=10, failed=1)
    gated.stdout.fnmatch_lines(
        ["baseline: *1 new or larger, 1 gone: *test_raw_connection_left_open*"]
    )
    gated.stdout.fnmatch_lines(["FAILED test_scenarios.py::test_clean_two - dbleak*"])


def test_the_server_of_a_url_run_keeps_nothing_of_the_session(
    pytester: pytest.Pytester, local_mysql_url: str
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={local_mysql_url}",
        FAST,
        "--dbleak-report=r.json",
    ).assert_outcomes(passed=8, failed=3)
    report = json.loads((pytester.path / "r.json").read_text())
    row = next(t for t in report["tests"] if t["leaks"])["leaks"][0]["processlist"][0]
    admin = parse_mysql_url(local_mysql_url).connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (row["user"],))
            assert cur.fetchone()[0] == 0, f"user {row['user']} was left on the server"
            cur.execute("SHOW DATABASES LIKE %s", (row["db"],))
            assert cur.fetchall() == (), f"database {row['db']} was left on the server"
    finally:
        admin.close()
