"""pytest-dbleak beside the plugins teams run it with: no option dropped, no crash,
no check lost. Each row of the README's compatibility table is a test here.

Rerun policy: every attempt is checked on its own, and a rerun does not take a leak
back. A leak fails the attempt like any failure (so rerun plugins rerun it), and once an
attempt has leaked, the test's last attempt fails with that leak even when it was clean
itself: a leak that happens one run in twenty is exactly what the gate exists to catch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.acceptance.helpers import FAST, MODULE_ENGINE, PREAMBLE, failure_of, only_dbleak_and

CORPUS = (
    PREAMBLE
    + MODULE_ENGINE
    + """

def test_clean(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_leaky(engine):
    KEEP.append(engine.connect())
"""
)

ASYNC_CORPUS = (
    PREAMBLE
    + "\nimport asyncio\n"
    + MODULE_ENGINE
    + """

@pytest.mark.asyncio
async def test_clean_async(engine):
    await asyncio.sleep(0)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


@pytest.mark.asyncio
async def test_leaky_async(engine):
    await asyncio.sleep(0)
    KEEP.append(engine.connect())
"""
)

# Each test misbehaves on its first attempt only; a file per test counts its attempts.
FLAKY = (
    PREAMBLE
    + """
import pathlib


def attempt(name):
    mark = pathlib.Path(__file__).with_name(f"attempts-{name}")
    n = int(mark.read_text()) + 1 if mark.exists() else 1
    mark.write_text(str(n))
    return n


def test_fails_once_then_passes(dbleak_mysql_url):
    assert attempt("fails") > 1


def test_leaks_once_then_is_clean(dbleak_mysql_url):
    if attempt("leaks") == 1:
        KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
"""
)


def outcomes(report: Path) -> dict[str, tuple[str, int]]:
    data = json.loads(report.read_text())
    return {t["nodeid"]: (t["outcome"], t["leaked"]) for t in data["tests"]}


def run(pytester: pytest.Pytester, plugin: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        FAST,
        "--dbleak-report=r.json",
        "-rA",
        *only_dbleak_and(*NEEDS.get(plugin, (plugin,))),
        *args,
    )


NEEDS = {"html": ("html", "metadata")}  # pytest-html needs pytest-metadata
EXPECTED = {
    "test_corpus.py::test_clean": ("passed", 0),
    "test_corpus.py::test_leaky": ("failed", 1),
}


@pytest.mark.parametrize(
    ("plugin", "args"),
    [
        pytest.param("timeout", ("--timeout=60",), id="pytest-timeout"),
        pytest.param(
            "timeout", ("--timeout=60", "--timeout-method=thread"), id="pytest-timeout-thread"
        ),
        pytest.param("pytest_cov", ("--cov=.", "--cov-report=term"), id="pytest-cov"),
        pytest.param("html", ("--html=report.html",), id="pytest-html"),
        pytest.param("rerunfailures", ("--reruns=0",), id="pytest-rerunfailures"),
        pytest.param("flaky", ("--force-flaky", "--max-runs=1"), id="flaky"),
    ],
)
def test_the_leaky_test_fails_and_its_twin_passes_beside_another_plugin(
    pytester: pytest.Pytester, plugin: str, args: tuple[str, ...]
) -> None:
    pytest.importorskip(
        {"pytest_cov": "pytest_cov", "html": "pytest_html"}.get(
            plugin, f"pytest_{plugin}" if plugin != "flaky" else "flaky"
        )
    )
    pytester.makepyfile(test_corpus=CORPUS)
    result = run(pytester, plugin, *args)
    result.assert_outcomes(passed=1, failed=1)
    assert outcomes(pytester.path / "r.json") == EXPECTED
    failure_of(result, "test_leaky").fnmatch_lines(["dbleak: 1 connection leaked*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    if plugin == "html":
        assert "dbleak: 1 connection leaked" in (pytester.path / "report.html").read_text()


def test_pytest_repeat_checks_every_repetition(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_repeat")
    pytester.makepyfile(test_corpus=CORPUS)
    result = run(pytester, "repeat", "--count=3")
    result.assert_outcomes(passed=3, failed=3)
    got = outcomes(pytester.path / "r.json")
    assert sorted(v for k, v in got.items() if "test_leaky" in k) == [("failed", 1)] * 3


def test_an_async_test_under_pytest_asyncio_is_checked(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_asyncio")
    pytester.makepyfile(test_corpus=ASYNC_CORPUS)
    result = run(pytester, "asyncio")
    result.assert_outcomes(passed=1, failed=1)
    assert outcomes(pytester.path / "r.json") == {
        "test_corpus.py::test_clean_async": ("passed", 0),
        "test_corpus.py::test_leaky_async": ("failed", 1),
    }


def test_reruns_rerun_a_flaky_test_and_do_not_take_a_leak_back(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_flaky=FLAKY)
    result = run(pytester, "rerunfailures", "--reruns=1", "-k", "fails_once")
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1, "deselected": 1}

    result = run(pytester, "rerunfailures", "--reruns=1", "-k", "leaks_once")
    assert result.parseoutcomes() == {"failed": 1, "rerun": 1, "deselected": 1}
    block = failure_of(result, "test_leaks_once_then_is_clean")
    block.fnmatch_lines(
        [
            "dbleak: leaked in an earlier attempt of this test",
            "dbleak: 1 connection leaked (1 server_connection) at test_flaky.py:*",
        ]
    )
    assert outcomes(pytester.path / "r.json") == {
        "test_flaky.py::test_leaks_once_then_is_clean": ("failed", 1)
    }


def test_only_rerun_reruns_its_errors_and_never_a_leak(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_flaky=FLAKY)
    result = run(pytester, "rerunfailures", "--reruns=2", "--only-rerun=AssertionError")
    # The assertion is rerun and passes; the leak has no exception to match: not rerun.
    assert result.parseoutcomes() == {"passed": 1, "failed": 1, "rerun": 1}
    assert re.search(
        r"FAILED test_flaky.py::test_leaks_once_then_is_clean - dbleak", result.stdout.str()
    )


def test_flaky_reruns_a_failing_test_and_a_leak_still_fails(pytester: pytest.Pytester) -> None:
    pytest.importorskip("flaky")
    pytester.makepyfile(test_flaky=FLAKY)
    result = run(pytester, "flaky", "--force-flaky", "--max-runs=2")
    result.assert_outcomes(passed=1, failed=1)
    failure_of(result, "test_leaks_once_then_is_clean").fnmatch_lines(
        ["dbleak: 1 connection leaked (1 server_connection)*"]
    )
