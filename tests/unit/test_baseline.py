"""Baseline gating: recording, loading, judging results, and what is gone."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.results import (
    CHECKED_OUT,
    GC_RETURN,
    SERVER_CONNECTION,
    CheckResult,
    Leak,
    conclude,
)
from pytest_dbleak.reports import baseline as bl


def result(nodeid: str, *leaks: tuple[str, int], **kwargs: Any) -> CheckResult:
    return CheckResult(nodeid, [Leak(kind, n, f"{n} {kind}") for kind, n in leaks], **kwargs)


@pytest.fixture
def base() -> bl.Baseline:
    return bl.Baseline(
        {
            "tests/a.py::test_pool": {CHECKED_OUT: 2},
            "tests/a.py::test_mixed": {CHECKED_OUT: 1, GC_RETURN: 1},
            "tests/b.py::test_not_run": {SERVER_CONNECTION: 3},
        }
    )


# -- recording ---------------------------------------------------------------------------
def test_from_results_sums_per_kind_and_skips_clean_tests() -> None:
    recorded = bl.Baseline.from_results(
        [
            result("t.py::clean"),
            result("t.py::two_leaks_same_kind", (CHECKED_OUT, 1), (CHECKED_OUT, 2)),
            result("t.py::mixed", (GC_RETURN, 1), (SERVER_CONNECTION, 2)),
        ]
    )
    assert recorded.tests == {
        "t.py::two_leaks_same_kind": {CHECKED_OUT: 3},
        "t.py::mixed": {GC_RETURN: 1, SERVER_CONNECTION: 2},
    }


def test_from_results_records_raw_counts_whatever_the_options() -> None:
    # Allowed, report-only or known: the baseline describes the code, not the run's options.
    recorded = bl.Baseline.from_results(
        [
            result("t.py::allowed", (CHECKED_OUT, 1), allowed=1),
            result("t.py::report_only", (CHECKED_OUT, 1), report_only=True),
        ]
    )
    assert set(recorded.tests) == {"t.py::allowed", "t.py::report_only"}


def test_save_writes_sorted_versioned_json_with_stable_bytes(tmp_path: Path) -> None:
    results = [
        result("tests/z.py::test_z", (SERVER_CONNECTION, 1), (CHECKED_OUT, 2)),
        result("tests/a.py::test_a", (GC_RETURN, 1)),
    ]
    path = tmp_path / "sub" / "baseline.json"
    bl.save(path, results)
    assert path.read_text(encoding="utf-8") == (
        "{\n"
        '  "tests": {\n'
        '    "tests/a.py::test_a": {\n'
        '      "gc_return": 1\n'
        "    },\n"
        '    "tests/z.py::test_z": {\n'
        '      "checked_out": 2,\n'
        '      "server_connection": 1\n'
        "    }\n"
        "  },\n"
        '  "tool": "pytest-dbleak",\n'
        '  "version": 1\n'
        "}\n"
    )
    first = path.read_bytes()
    bl.save(path, list(reversed(results)))  # run order must not change the file
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["baseline.json"]  # no temp files left


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    written = bl.save(path, [result("t.py::x", (CHECKED_OUT, 2))])
    loaded = bl.load(path)
    assert loaded == written
    assert loaded is not None
    assert loaded.tests == {"t.py::x": {CHECKED_OUT: 2}}


def test_save_of_a_clean_run_records_an_empty_baseline(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    bl.save(path, [result("t.py::clean")])
    assert json.loads(path.read_text()) == {"tests": {}, "tool": "pytest-dbleak", "version": 1}


def test_save_failure_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "baseline.json"
    bl.save(path, [result("t.py::x", (CHECKED_OUT, 1))])
    before = path.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bl.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        bl.save(path, [result("t.py::x", (CHECKED_OUT, 5))])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_recorded_line() -> None:
    recorded = bl.Baseline({"a": {CHECKED_OUT: 2}, "b": {GC_RETURN: 1}})
    assert bl.recorded_line("b.json", recorded) == (
        "baseline: recorded 2 leaking tests (3 connections) to b.json"
    )
    assert bl.recorded_line("b.json", bl.Baseline({})) == (
        "baseline: recorded 0 leaking tests (0 connections) to b.json"
    )


# -- loading -----------------------------------------------------------------------------
def test_load_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert bl.load(tmp_path / "nope.json") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"tests": {}}', "unsupported baseline version None"),
        ('{"version": 2, "tests": {}}', "newer pytest-dbleak"),
        ('{"version": 1}', "'tests' must be an object"),
        ('{"version": 1, "tests": {"t::x": {"checked_out": -1}}}', "non-negative integer"),
        ('{"version": 1, "tests": {"t::x": {"checked_out": 1.5}}}', "non-negative integer"),
        ('{"version": 1, "tests": {"t::x": {"checked_out": true}}}', "non-negative integer"),
        ('{"version": 1, "tests": {"t::x": 3}}', "non-negative integer"),
    ],
)
def test_load_of_a_broken_file_raises_a_one_line_error(
    tmp_path: Path, text: str, message: str
) -> None:
    # A corrupt baseline must stop the run, not be taken as "no baseline": that would
    # re-record it and excuse every leak.
    path = tmp_path / "baseline.json"
    path.write_text(text)
    with pytest.raises(DbleakError, match=message) as info:
        bl.load(path)
    assert str(path) in str(info.value)


def test_load_of_an_unreadable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(DbleakError, match="cannot read the baseline"):
        bl.load(tmp_path)  # a directory


def test_load_keeps_unknown_kinds_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "baseline.json"
    path.write_text('{"version": 1, "tests": {"t::x": {"future_kind": 1, "checked_out": 0}}}')
    with caplog.at_level(logging.WARNING, logger="pytest_dbleak.reports.baseline"):
        loaded = bl.load(path)
    assert loaded is not None
    assert loaded.tests == {"t::x": {"future_kind": 1}}  # zero counts dropped
    assert "unknown leak kinds future_kind" in caplog.text


# -- judging -----------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2])
def test_a_leak_within_the_recorded_count_is_known_and_does_not_fail(
    base: bl.Baseline, count: int
) -> None:
    r = result("tests/a.py::test_pool", (CHECKED_OUT, count))
    assert r.failed
    judgement = base.judge(r)
    assert judgement.status == bl.KNOWN
    assert judgement.known
    assert not judgement.failing
    assert judgement.grown == {}
    assert not r.known  # frozen: judging never changes it
    known = conclude(r, known=base.knows)  # a result made with the baseline's knowledge
    assert known.known
    assert not known.failed
    assert judgement.describe() == "known leak, within the baseline (2 checked_out)"


def test_a_larger_leak_fails_and_says_by_how_much(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_pool", (CHECKED_OUT, 3))
    judgement = base.judge(r)
    assert judgement.status == bl.LARGER
    assert judgement.failing
    assert judgement.grown == {CHECKED_OUT: 1}
    assert judgement.recorded == {CHECKED_OUT: 2}
    assert judgement.current == {CHECKED_OUT: 3}
    assert not r.known
    assert r.failed
    assert judgement.describe() == "larger than the baseline: checked_out 2 -> 3 (+1)"
    assert not conclude(r, known=base.knows).known


def test_a_kind_not_recorded_for_the_test_is_larger_from_zero(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_mixed", (CHECKED_OUT, 1), (SERVER_CONNECTION, 2))
    judgement = base.judge(r)
    assert judgement.status == bl.LARGER
    assert judgement.grown == {SERVER_CONNECTION: 2}
    assert r.failed
    assert judgement.describe() == "larger than the baseline: server_connection 0 -> 2 (+2)"


def test_a_test_not_in_the_baseline_is_new(base: bl.Baseline) -> None:
    r = result("tests/c.py::test_new", (GC_RETURN, 1))
    judgement = base.judge(r)
    assert judgement.status == bl.NEW
    assert judgement.recorded is None
    assert judgement.grown == {GC_RETURN: 1}
    assert r.failed
    assert judgement.describe() == "new leak, not in the baseline: 1 gc_return"


def test_a_clean_result_is_clean_and_not_marked_known(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_pool")
    judgement = base.judge(r)
    assert judgement.status == bl.CLEAN
    assert not judgement.known
    assert not judgement.failing
    assert not r.known


def test_compare_does_not_touch_the_result(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_pool", (CHECKED_OUT, 1))
    assert base.compare(r).known
    assert not r.known


def test_judging_ignores_the_allowance(base: bl.Baseline) -> None:
    # allow= decides failing on its own; the baseline only compares raw counts.
    r = result("tests/c.py::test_new", (CHECKED_OUT, 1), allowed=1)
    assert base.judge(r).status == bl.NEW
    assert not r.failed


# -- gone --------------------------------------------------------------------------------
def test_gone_lists_shrunk_and_fixed_leaks_of_tests_that_ran(base: bl.Baseline) -> None:
    gone = base.gone(
        [
            result("tests/a.py::test_pool", (CHECKED_OUT, 1)),  # 2 -> 1
            result("tests/a.py::test_mixed"),  # fixed
            result("tests/c.py::test_new", (CHECKED_OUT, 4)),  # not in the baseline
            # tests/b.py::test_not_run did not run: not gone, just unknown
        ]
    )
    assert [(g.nodeid, g.fewer, g.fixed) for g in gone] == [
        ("tests/a.py::test_mixed", {CHECKED_OUT: 1, GC_RETURN: 1}, True),
        ("tests/a.py::test_pool", {CHECKED_OUT: 1}, False),
    ]
    assert gone[1].describe() == "tests/a.py::test_pool (1 checked_out)"


def test_gone_and_larger_can_both_hold_for_one_test(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_mixed", (GC_RETURN, 3))
    assert base.compare(r).grown == {GC_RETURN: 2}
    [gone] = base.gone([r])
    assert gone.fewer == {CHECKED_OUT: 1}
    assert not gone.fixed


def test_nothing_is_gone_when_every_leak_is_still_there(base: bl.Baseline) -> None:
    assert base.gone([result("tests/a.py::test_pool", (CHECKED_OUT, 2))]) == []
    assert base.gone([]) == []


# -- summary -----------------------------------------------------------------------------
def test_summary_line_as_in_the_docs() -> None:
    base = bl.Baseline(
        {
            "tests/x.py::test_y": {CHECKED_OUT: 2},
            **{f"tests/k.py::test_{i}": {CHECKED_OUT: 1} for i in range(3)},
        }
    )
    results = [result(f"tests/k.py::test_{i}", (CHECKED_OUT, 1)) for i in range(3)]
    results.append(result("tests/x.py::test_y"))
    assert base.summary(results) == (
        "baseline: 3 known leaks still present, 1 gone: tests/x.py::test_y (2 checked_out)"
    )


def test_summary_counts_new_or_larger_and_says_when_nothing_is_gone(base: bl.Baseline) -> None:
    results = [
        result("tests/a.py::test_pool", (CHECKED_OUT, 2)),
        result("tests/a.py::test_mixed", (CHECKED_OUT, 2), (GC_RETURN, 1)),
        result("tests/c.py::test_new", (GC_RETURN, 1)),
    ]
    assert base.summary(results) == (
        "baseline: 1 known leak still present, 2 new or larger, none gone"
    )


def test_summary_truncates_a_long_gone_list() -> None:
    base = bl.Baseline({f"t.py::test_{i}": {CHECKED_OUT: 1} for i in range(8)})
    text = base.summary([result(f"t.py::test_{i}") for i in range(8)], limit=2)
    assert text == (
        "baseline: 0 known leaks still present, 8 gone: t.py::test_0 (1 checked_out); "
        "t.py::test_1 (1 checked_out); and 6 more"
    )


def test_summary_does_not_mark_results_known(base: bl.Baseline) -> None:
    r = result("tests/a.py::test_pool", (CHECKED_OUT, 1))
    base.summary([r])
    assert not r.known


def test_known_survives_the_json_round_trip_of_xdist(base: bl.Baseline) -> None:
    # Workers judge; the controller rebuilds results from report dicts.
    r = conclude(result("tests/a.py::test_pool", (CHECKED_OUT, 1)), known=base.knows)
    again = CheckResult.from_dict(json.loads(json.dumps(r.as_dict())))
    assert again.known
    assert not again.failed
    assert base.compare(again).known


def test_module_does_not_import_pytest() -> None:
    source = Path(bl.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+_?pytest\b", source, re.M)
