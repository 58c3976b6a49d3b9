"""CI shards: one suite split over several runs merges into the verdict of the whole run.

``python -m pytest_dbleak merge`` reads the shards' ``--dbleak-report`` files and writes
one report, one HTML page and one baseline; its exit status follows a single run's rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.helpers import FAST, MODULE_ENGINE, ONLY_DBLEAK, PREAMBLE

SUITE_A = (
    PREAMBLE
    + MODULE_ENGINE
    + """

def test_clean_one(engine):
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def test_checkout_left_open(engine):
    KEEP.append(engine.connect())


def test_clean_two(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1")


@pytest.mark.skipif(__import__("os").environ.get("SKIP_RAW") == "1", reason="shard without it")
def test_raw_connection_left_open(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""
)

SUITE_B = (
    PREAMBLE
    + MODULE_ENGINE
    + """

def test_clean_three(engine):
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def test_two_checkouts_left_open(engine):
    KEEP.extend([engine.connect(), engine.connect()])


def test_clean_four():
    assert True
"""
)

SHARDS = (
    ("test_a.py::test_clean_one", "test_a.py::test_checkout_left_open"),
    ("test_a.py::test_clean_two", "test_a.py::test_raw_connection_left_open"),
    ("test_b.py",),
)


def merge(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbleak", "merge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def verdicts(report: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """What a report says of each test, without the run-specific numbers."""
    return {
        t["nodeid"]: (t["outcome"], t["leaked"], t["failed"], t["leak_failed"])
        for t in report["tests"]
    }


def test_three_shards_merge_into_the_verdict_and_baseline_of_the_unsplit_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)
    whole = pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-report=whole.json", "--dbleak-baseline=whole.bl"
    )
    assert whole.ret == 6
    whole.assert_outcomes(passed=4, failed=3)

    shard_reports = []
    for index, nodeids in enumerate(SHARDS):
        shard = pytester.runpytest_subprocess(
            *ONLY_DBLEAK, "--dbleak", FAST, f"--dbleak-report=shard{index}.json", *nodeids
        )
        assert shard.ret == 6, shard.stdout.str()
        shard_reports.append(f"shard{index}.json")

    done = merge(
        pytester.path,
        *shard_reports,
        "--report=merged.json",
        "--html=merged.html",
        "--baseline=merged.bl",
    )
    assert done.returncode == 6, done.stdout + done.stderr
    assert "dbleak: 3 tests leaked connections" in done.stdout
    assert "baseline: recorded 3 leaking tests" in done.stdout

    whole_report = json.loads((pytester.path / "whole.json").read_text())
    merged_report = json.loads((pytester.path / "merged.json").read_text())
    assert verdicts(merged_report) == verdicts(whole_report)
    assert merged_report["summary"] == whole_report["summary"]
    assert merged_report["run"]["shards"] == 3
    assert (pytester.path / "merged.bl").read_text() == (pytester.path / "whole.bl").read_text()
    page = (pytester.path / "merged.html").read_text()
    assert page.count('class="leak-marker failed"') == 3

    # Gating the merged shards on the recorded baseline: green, nothing gone.
    gated = merge(pytester.path, *shard_reports, "--report=gated.json", "--baseline=whole.bl")
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "baseline: 3 known leaks still present, none gone" in gated.stdout


def test_a_baseline_run_on_a_slice_calls_no_leak_of_another_slice_or_a_skipped_test_gone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_b=SUITE_B)
    pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-baseline=base.json", "--dbleak-report-only"
    ).assert_outcomes(passed=7)

    # Shard: test_b.py only, and test_a.py with its raw leak skipped: nothing is gone.
    monkeypatch.setenv("SKIP_RAW", "1")
    slice_run = pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-baseline=base.json", "test_b.py", "test_a.py"
    )
    slice_run.assert_outcomes(passed=6, skipped=1)
    slice_run.stdout.fnmatch_lines(["baseline: 2 known leaks still present, none gone"])

    # The same test run and clean: gone.
    fixed = SUITE_B.replace("KEEP.extend([engine.connect(), engine.connect()])", "pass")
    pytester.makepyfile(test_b=fixed)
    gone = pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-baseline=base.json", "test_b.py"
    )
    gone.stdout.fnmatch_lines(
        ["baseline: 0 known leaks still present, 1 gone: *test_two_checkouts*"]
    )


def test_a_shard_with_a_broken_test_makes_the_merged_verdict_1(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=SUITE_A, test_broken="def test_broken():\n    assert False\n")
    pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-report=a.json", "test_a.py"
    )
    broken = pytester.runpytest_subprocess(
        *ONLY_DBLEAK, "--dbleak", FAST, "--dbleak-report=b.json", "test_broken.py"
    )
    assert broken.ret == pytest.ExitCode.TESTS_FAILED
    assert merge(pytester.path, "a.json", "--report=m.json").returncode == 6
    assert merge(pytester.path, "a.json", "b.json", "--report=m.json").returncode == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "missing.json: no such file"),
        ("{not json", "missing.json: not JSON"),
        ('{"tests": []}', "missing.json: not a pytest-dbleak report"),
        ('{"tool": "pytest-dbleak", "version": 99, "tests": []}', "report version 99"),
    ],
)
def test_bad_input_to_merge_is_one_line_and_exit_4(
    tmp_path: Path, content: str | None, says: str
) -> None:
    if content is not None:
        (tmp_path / "missing.json").write_text(content)
    done = merge(tmp_path, "missing.json", "--report=out.json")
    assert done.returncode == 4
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert not (tmp_path / "out.json").exists()
