"""What a run reports: the JSON report, the terminal summary, JUnit properties, the exit
code - and that clean tests were never kept waiting (process backend)."""

from __future__ import annotations

import json
import re
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_dbleak.reports.reporting import TIMES
from tests.acceptance.helpers import ONLY_DBLEAK, PREAMBLE, failure_of, line_of, run_pytest_in

REPORTED = '''
import pathlib


@pytest.fixture(scope="session", autouse=True)
def secret(dbleak_mysql_url):
    """Lets the outer test look for the session password in everything the run wrote."""
    pathlib.Path("secret.txt").write_text(sa.engine.make_url(dbleak_mysql_url).password)


@pytest.fixture(scope="module")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_reset_on_return=None)
    yield engine
    engine.dispose()


def test_clean_checkout(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_clean_null_pool(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_clean_raw_connection(dbleak_mysql_url):
    conn = pymysql.connect(**connect_args(dbleak_mysql_url))
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    conn.close()


def test_clean_raw_connection_in_a_thread(dbleak_mysql_url):
    in_thread(lambda: pymysql.connect(**connect_args(dbleak_mysql_url)).close())


def test_clean_transaction(engine):
    raw = engine.raw_connection()
    with raw.cursor() as cursor:
        cursor.execute("SELECT 1")
    raw.commit()
    raw.close()


def test_clean_engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    for _ in range(3):
        engine.connect().close()
    engine.dispose()


def test_leaky_checkout(engine):
    KEEP.append(engine.connect())  # LEAK-checkout


def test_leaky_raw_connection(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))  # LEAK-raw
'''

CLEAN = (
    "test_clean_checkout",
    "test_clean_null_pool",
    "test_clean_raw_connection",
    "test_clean_raw_connection_in_a_thread",
    "test_clean_transaction",
    "test_clean_engine",
)
LEAKY = {
    "test_leaky_checkout": ("checked_out", "# LEAK-checkout"),
    "test_leaky_raw_connection": ("server_connection", "# LEAK-raw"),
}


NEVER_WAITED_OUT = 120  # seconds: far beyond any run of this module


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[pytest.RunResult, Path]:
    """One run that this module's tests read from different sides."""
    path = tmp_path_factory.mktemp("reported")
    (path / "test_reported.py").write_text(PREAMBLE + REPORTED)
    # A settle time no test of this run may wait out: a clean test must not spend any of
    # it, and a leak whose holder is gone is judged without waiting for it.
    result = run_pytest_in(
        path,
        "--dbleak",
        "--dbleak-backend=process",
        f"--dbleak-settle-timeout={NEVER_WAITED_OUT}",
        *ONLY_DBLEAK,
        "--dbleak-report=reports/leaks.json",
        "--junitxml=junit.xml",
    )
    return result, path


@pytest.fixture(scope="module")
def reported_run(reported: tuple[pytest.RunResult, Path]) -> pytest.RunResult:
    return reported[0]


@pytest.fixture(scope="module")
def run_dir(reported: tuple[pytest.RunResult, Path]) -> Path:
    return reported[1]


def test_the_run_fails_only_the_leaky_tests_with_the_leaks_only_exit_code(
    reported_run: pytest.RunResult,
) -> None:
    reported_run.assert_outcomes(passed=len(CLEAN), failed=len(LEAKY))
    assert reported_run.ret == 6  # EXIT_LEAKS_FOUND: every failure is a leak


def test_the_json_report_has_one_entry_per_test_with_its_leaks_and_counts(
    reported_run: pytest.RunResult, run_dir: Path
) -> None:
    path = run_dir / "reports" / "leaks.json"
    report = json.loads(path.read_text())
    source = PREAMBLE + REPORTED

    assert report["tool"] == "pytest-dbleak"
    assert report["server"]["backend"] == "process"
    assert report["summary"] == {
        "tests": len(CLEAN) + len(LEAKY),
        "leaking_tests": 2,
        "failed_tests": 2,
        "other_failed_tests": 0,
        "leaked_connections": 2,
    }
    assert report["run"]["duration"] > 0  # the run started a server and ran tests
    tests = {entry["nodeid"]: entry for entry in report["tests"]}
    assert sorted(tests) == sorted(f"test_reported.py::{n}" for n in (*CLEAN, *LEAKY))
    for entry in tests.values():
        for side in ("before", "after"):
            assert set(entry[side]) == {"server_connections", "threads_connected", "checked_out"}
            assert all(isinstance(v, int) and v >= 0 for v in entry[side].values())

    for name, (kind, marker) in LEAKY.items():
        entry = tests[f"test_reported.py::{name}"]
        assert (entry["outcome"], entry["leaked"], entry["failed"]) == ("failed", 1, True)
        [leak] = entry["leaks"]
        assert (leak["kind"], leak["count"]) == (kind, 1)
        assert leak["site"] == {
            "file": "test_reported.py",
            "line": line_of(source, marker),
            "function": name,
        }
        assert len(leak["processlist"]) == 1
    # The checkout reuses an idle connection of the module's engine: one more checked out.
    checkout = tests["test_reported.py::test_leaky_checkout"]
    assert checkout["after"]["checked_out"] == checkout["before"]["checked_out"] + 1
    raw = tests["test_reported.py::test_leaky_raw_connection"]
    assert raw["after"]["server_connections"] == raw["before"]["server_connections"] + 1
    assert raw["after"]["checked_out"] == raw["before"]["checked_out"]

    for name in CLEAN:
        entry = tests[f"test_reported.py::{name}"]
        assert (entry["outcome"], entry["leaked"], entry["failed"], entry["leaks"]) == (
            "passed",
            0,
            False,
            [],
        )


def test_a_clean_test_does_not_wait_and_a_leak_whose_holder_is_gone_is_judged_at_once(
    reported_run: pytest.RunResult, run_dir: Path
) -> None:
    report = json.loads((run_dir / "reports" / "leaks.json").read_text())
    waited = {entry["nodeid"].split("::")[1]: entry["waited"] for entry in report["tests"]}
    assert {name: waited[name] for name in CLEAN} == dict.fromkeys(CLEAN, 0)
    # The test's own thread held them and has finished: judged after a second look, not
    # after waiting out the settle time (the bench measures how long the look takes).
    assert all(0 < waited[name] < NEVER_WAITED_OUT for name in LEAKY), waited


def test_the_terminal_summary_lists_the_leaking_tests(reported_run: pytest.RunResult) -> None:
    source = PREAMBLE + REPORTED
    reported_run.stdout.fnmatch_lines(
        [
            "*= dbleak: 2 tests leaked connections =*",
            "test_reported.py::test_leaky_checkout: 1 connection leaked (1 checked_out) at "
            f"test_reported.py:{line_of(source, '# LEAK-checkout')}",
            "test_reported.py::test_leaky_raw_connection: 1 connection leaked "
            "(1 server_connection) "
            f"at test_reported.py:{line_of(source, '# LEAK-raw')}",
            "*= short test summary info =*",
        ],
        consecutive=False,
    )
    for name in CLEAN:
        reported_run.stdout.no_fnmatch_line(f"test_reported.py::{name}: *")


def test_junit_xml_carries_the_leak_properties(
    reported_run: pytest.RunResult, run_dir: Path
) -> None:
    root = ET.parse(run_dir / "junit.xml").getroot()
    props = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in root.iter("testcase")
    }
    for name in LEAKY:
        counts = props[name].pop("dbleak_Threads_connected")
        assert re.fullmatch(r"\d+ -> \d+", counts), counts
        assert props[name] == {"dbleak_leaked": "1", "dbleak_failed": "True"}
    for name in CLEAN:
        assert props[name] == {}


def test_no_output_or_report_contains_the_session_password(
    reported_run: pytest.RunResult, run_dir: Path
) -> None:
    password = (run_dir / "secret.txt").read_text()
    assert len(password) >= 16
    assert password not in reported_run.stdout.str()
    assert password not in reported_run.stderr.str()
    assert password not in (run_dir / "reports" / "leaks.json").read_text()
    assert password not in (run_dir / "junit.xml").read_text()


MANY = """
@pytest.fixture(scope="module")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def open_one(engine):
    return engine.connect()  # LEAK-many


def test_leaks_48_connections_at_one_line(engine):
    for _ in range(48):
        KEEP.append(open_one(engine))


def test_returns_48_connections_opened_at_one_line(engine):
    for _ in range(48):
        open_one(engine).close()
"""


def test_48_identical_leaks_are_one_entry_a_few_dozen_lines_long_and_the_json_keeps_them_all(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_many=PREAMBLE + MANY)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        "--dbleak-settle-timeout=0.2",
        *ONLY_DBLEAK,
        "--dbleak-report=r.json",
        "--dbleak-html=r.html",
    )
    result.assert_outcomes(passed=1, failed=1)
    line = line_of(PREAMBLE + MANY, "# LEAK-many")

    failure = failure_of(result, "test_leaks_48_connections_at_one_line")
    assert len(failure.lines) <= 36, "\n".join(failure.lines)
    failure.fnmatch_lines(
        [
            f"dbleak: 48 connections leaked (48 checked_out) at test_many.py:{line}",
            f"48 {TIMES} checked-out connection never returned: server connections of NullPool "
            "checked out",
            "    connection ids: *, *, *, *, * and 43 more",
            "    test_many.py:* in test_leaks_48_connections_at_one_line",
            f"    test_many.py:{line} in open_one",
            "processlist rows left behind:",
            "  id  user*",
            "  * and 43 more rows (all in the JSON report)",
        ]
    )
    assert sum("checked-out connection never returned" in x for x in failure.lines) == 1

    tests = {
        t["nodeid"].split("::")[1]: t
        for t in json.loads((pytester.path / "r.json").read_text())["tests"]
    }
    [leak] = tests["test_leaks_48_connections_at_one_line"]["leaks"]
    assert (leak["kind"], leak["count"], leak["occurrences"]) == ("checked_out", 48, 48)
    assert len(set(leak["connection_ids"])) == 48
    assert sorted(row["id"] for row in leak["processlist"]) == sorted(leak["connection_ids"])
    assert tests["test_returns_48_connections_opened_at_one_line"]["leaks"] == []

    page = (pytester.path / "r.html").read_text()
    assert page.count('class="leak-item kind-checked_out"') == 1
    assert "checked_out</span> &times; 48" in page


LAUNCHED = """
def test_leaks_a_checkout(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    KEEP.append(engine)
    KEEP.append(engine.connect())  # LEAK-launched
"""


def test_a_run_started_through_the_pytest_console_script_shows_no_launcher_frame(
    pytester: pytest.Pytester,
) -> None:
    script = Path(sysconfig.get_path("scripts")) / "pytest"
    if not script.exists():
        pytest.skip(f"no pytest console script at {script}")
    pytester.makepyfile(test_launched=PREAMBLE + LAUNCHED)
    result = pytester.run(
        str(script),
        "--dbleak",
        "--dbleak-backend=process",
        "--dbleak-settle-timeout=0.2",
        *ONLY_DBLEAK,
        "--dbleak-report=r.json",
    )
    assert result.ret == 6, result.stdout.str()
    line = line_of(PREAMBLE + LAUNCHED, "# LEAK-launched")
    failure = failure_of(result, "test_leaks_a_checkout")
    failure.fnmatch_lines(
        [
            "checked-out connection never returned: *",
            f"    test_launched.py:{line} in test_leaks_a_checkout",
            "-* dbleak -*",
        ],
        consecutive=True,
    )
    assert str(script) not in result.stdout.str()
    [entry] = json.loads((pytester.path / "r.json").read_text())["tests"]
    stacks = [leak["stack"] for leak in entry["leaks"]]
    assert stacks
    site = {"file": "test_launched.py", "line": line, "function": "test_leaks_a_checkout"}
    assert all(stack == [site] for stack in stacks), stacks


COUNTED_ONCE = """
def test_drops_a_connection_of_an_engine_it_never_disposes(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    KEEP.append(engine)
    conn = engine.connect()  # LEAK-dropped
    conn.execute(sa.text("SELECT 1"))
    del conn
    gc.collect()  # the garbage collector returns it to the engine's pool


def test_closes_the_connection_and_disposes_the_engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()
    conn.execute(sa.text("SELECT 1"))
    conn.close()
    engine.dispose()


def test_leaves_a_sqlite_engine_undisposed(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")  # LEAK-sqlite
    KEEP.append(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
"""


def test_a_connection_dropped_into_an_undisposed_engine_is_counted_once_and_sqlite_holds_no_server_connection(  # noqa: E501
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_once=PREAMBLE + COUNTED_ONCE)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        "--dbleak-settle-timeout=0.2",
        *ONLY_DBLEAK,
        "--dbleak-report=r.json",
    )
    result.assert_outcomes(passed=1, failed=2)
    source = PREAMBLE + COUNTED_ONCE
    failure_of(result, "test_drops_a_connection_of_an_engine_it_never_disposes").fnmatch_lines(
        [
            "dbleak: 1 connection leaked (1 gc_return) at "
            f"test_once.py:{line_of(source, '# LEAK-dropped')}",
            "connection returned only by the garbage collector*",
            "engine created and never disposed: QueuePool still alive without dispose(), holding "
            "1 server connection (already counted as gc_return)",
            "server connections of the session: * before, * after",
        ]
    )
    tests = {
        t["nodeid"].split("::")[1]: t
        for t in json.loads((pytester.path / "r.json").read_text())["tests"]
    }
    dropped = tests["test_drops_a_connection_of_an_engine_it_never_disposes"]
    gained = dropped["after"]["server_connections"] - dropped["before"]["server_connections"]
    assert dropped["leaked"] == gained == 1
    failure_of(result, "test_leaves_a_sqlite_engine_undisposed").fnmatch_lines(
        [
            "dbleak: 1 connection leaked (1 undisposed_engine) at "
            f"test_once.py:{line_of(source, '# LEAK-sqlite')}",
            "engine created and never disposed: QueuePool still alive without dispose(), holding "
            "1 connection",
        ]
    )
    assert tests["test_closes_the_connection_and_disposes_the_engine"]["leaks"] == []


def test_the_header_names_the_backend_and_the_server_version_without_the_protocol_prefix(
    reported_run: pytest.RunResult, run_dir: Path
) -> None:
    reported_run.stdout.fnmatch_lines(["dbleak: process backend, server *.* at 127.0.0.1:*"])
    [header] = [x for x in reported_run.stdout.lines if x.startswith("dbleak: process backend")]
    version = json.loads((run_dir / "reports" / "leaks.json").read_text())["server"]["version"]
    assert header.split(", server ")[1].split(" at ")[0] == version
    assert not version.startswith("5.5.5-")
    assert version[0].isdigit()


COUNTED = """
def test_passes(dbleak_mysql_url):
    pass


@pytest.mark.skip(reason="not today")
def test_skipped_by_a_marker(dbleak_mysql_url):
    pass


def test_skips_itself(dbleak_mysql_url):
    pytest.skip("not here")


def test_fails_on_its_own_and_leaks(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    assert False, "broken on its own"


def test_only_leaks(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""


def test_the_summary_counts_checked_tests_and_the_json_counts_leak_failures_only(
    pytester: pytest.Pytester, local_mysql_url: str
) -> None:
    pytester.makepyfile(test_counted=PREAMBLE + COUNTED)
    url_args = ["--dbleak-backend=url", f"--dbleak-mysql-url={local_mysql_url}"]

    clean = pytester.runpytest_subprocess(
        "--dbleak", *url_args, "--dbleak-settle-timeout=0.2", *ONLY_DBLEAK, "-k", "pass or skip"
    )
    clean.assert_outcomes(passed=1, skipped=2)
    clean.stdout.fnmatch_lines(
        [
            "dbleak: url backend, server * at 127.0.0.1:3306",
            "*- dbleak: no leaks in 1 checked test -*",
        ]
    )

    mixed = pytester.runpytest_subprocess(
        "--dbleak", *url_args, "--dbleak-settle-timeout=0.2", *ONLY_DBLEAK, "--dbleak-report=r.json"
    )
    mixed.assert_outcomes(passed=1, skipped=2, failed=2)
    assert mixed.ret == 1  # one test is broken on its own: not the leaks-only exit code
    summary = json.loads((pytester.path / "r.json").read_text())["summary"]
    assert summary == {
        "tests": 5,
        "leaking_tests": 2,
        "failed_tests": 1,
        "other_failed_tests": 1,
        "leaked_connections": 2,
    }
