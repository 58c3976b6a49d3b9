"""The frozen CheckResult: made once, never changed; later findings make a new one."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_dbleak.engine.results import (
    CHECKED_OUT,
    LOCK_WAIT,
    CheckResult,
    Counts,
    Leak,
    Site,
    conclude,
)


def leak(kind: str = CHECKED_OUT, count: int = 1, line: int = 9) -> Leak:
    site = Site("t.py", line, "test_x")
    return Leak(kind, count, f"{kind} at {line}", site=site, stack=[site])


def test_a_result_is_frozen_and_its_leaks_a_tuple() -> None:
    result = CheckResult("t.py::test_x", [leak()])  # a list in, a tuple kept
    assert isinstance(result.leaks, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.known = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.after.checked_out = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.leaks.append(leak())  # type: ignore[attr-defined]


def test_leaks_of_one_kind_and_stack_are_grouped_when_the_result_is_made() -> None:
    result = CheckResult("t.py::test_x", (leak(), leak(), leak(line=10)))
    assert [(x.count, x.occurrences) for x in result.leaks] == [(2, 2), (1, 1)]


def test_conclude_marks_a_result_known_only_when_the_baseline_knows_it() -> None:
    draft = CheckResult("t.py::test_x", [leak()])
    assert draft.failed
    known = conclude(draft, known=lambda r: r.leaked <= 1)
    assert known.known
    assert not known.failed
    assert not draft.known  # the draft is untouched
    assert not conclude(draft, known=lambda r: False).known
    assert conclude(draft) is draft


def test_conclude_never_asks_the_baseline_about_a_clean_result() -> None:
    asked: list[CheckResult] = []
    clean = CheckResult("t.py::test_x")
    assert conclude(clean, known=lambda r: asked.append(r) or True) is clean
    assert asked == []


def test_adding_makes_a_new_result_judged_again_and_leaves_the_first() -> None:
    first = conclude(CheckResult("t.py::test_x", [leak()], allowed=0), known=lambda r: True)
    stuck = Leak(LOCK_WAIT, 0, "a statement stuck behind it")
    # The baseline knows one connection, not more.
    later = first.adding([stuck, leak(count=2, line=11)], known=lambda r: r.leaked <= 1)
    assert later is not first
    assert [x.kind for x in first.leaks] == [CHECKED_OUT]
    assert first.known
    assert [x.kind for x in later.leaks] == [CHECKED_OUT, LOCK_WAIT, CHECKED_OUT]
    assert later.leaked == 3
    assert not later.known
    assert later.failed


def test_a_result_survives_the_json_round_trip_of_xdist_whole() -> None:
    result = CheckResult(
        "t.py::test_x",
        [leak()],
        allowed=1,
        before=Counts(1, 2, 0),
        after=Counts(2, 3, 1),
        waited=0.25,
        runs=100,
        stress="dbleak_jobs",
        known=True,
        report_only=True,
    )
    again = CheckResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert again == result
