"""What a check's verdict does to pytest's reports (verdict.py), on real TestReports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_dbleak.engine.results import CHECKED_OUT, CheckResult, Leak, Site
from pytest_dbleak.pytest_layer import verdict


def report(when: str, outcome: str = "passed", **extra: Any) -> pytest.TestReport:
    rep = pytest.TestReport("t.py::test_x", ("t.py", 3, "test_x"), {}, outcome, None, when)
    for name, value in extra.items():
        setattr(rep, name, value)
    return rep


def leaky(allowed: int = 0, **flags: Any) -> CheckResult:
    leak = Leak(
        CHECKED_OUT,
        1,
        "server connection 7 of QueuePool checked out",
        site=Site("t.py", 9, "test_x"),
        stack=[Site("t.py", 9, "test_x")],
    )
    return CheckResult("t.py::test_x", [leak], allowed=allowed, **flags)


def apply(rep: pytest.TestReport, result: CheckResult, **kwargs: Any) -> None:
    kwargs.setdefault("own_failure", False)
    verdict.apply(rep, result, location=("t.py", 4), redact=str, **kwargs)


def test_a_clean_check_only_records_the_result() -> None:
    rep = report("teardown")
    apply(rep, CheckResult("t.py::test_x"))
    assert rep.passed
    assert rep.dbleak.leaked == 0  # type: ignore[attr-defined]
    assert rep.sections == []


def test_a_failing_leak_fails_the_teardown_report_at_the_leak_site() -> None:
    rep = report("teardown")
    apply(rep, leaky())
    assert rep.failed
    assert rep.dbleak_failed  # type: ignore[attr-defined]
    crash = rep.longrepr.reprcrash  # type: ignore[union-attr]
    assert (crash.path, crash.lineno) == ("t.py", 9)
    assert crash.message == "dbleak: 1 connection leaked (1 checked_out) at t.py:9"
    assert [name for name, _ in rep.sections] == ["dbleak"]
    assert ("dbleak_failed", True) in rep.user_properties


def test_a_tolerated_leak_is_a_section_of_a_passing_report() -> None:
    rep = report("teardown")
    apply(rep, leaky(allowed=1))
    assert rep.passed
    assert rep.sections[0][0] == "dbleak"
    assert "1 allowed" in rep.sections[0][1]


def test_a_test_that_failed_on_its_own_keeps_its_error_and_carries_the_leak() -> None:
    call = report("call", "failed", longrepr="AssertionError")
    teardown = report("teardown")
    apply(teardown, leaky(), own_failure=True)
    assert teardown.passed
    verdict.carry_section(teardown, call)
    assert call.longrepr == "AssertionError"
    assert call.sections[0][0] == "dbleak"
    assert "1 checked_out" in call.sections[0][1]


def test_a_note_leads_the_failure_text() -> None:
    rep = report("teardown")
    apply(rep, leaky(), note="dbleak: leaked in an earlier attempt of this test")
    assert rep.longreprtext.startswith("dbleak: leaked in an earlier attempt of this test\n")


PLAIN_PASS = ("passed", ".", "PASSED")  # what pytest's own implementation says


class TestDeferredStatus:
    """A passing call of a checked test is shown by its teardown report: the wrapper
    adjusts the status the inner implementations gave, never asks for it again."""

    def test_a_passing_call_is_hidden_and_its_status_shown_at_teardown(self) -> None:
        deferred = verdict.DeferredStatus()
        call = report("call", dbleak_checked=True)
        assert deferred.adjust(call, PLAIN_PASS) == verdict.HIDDEN_STATUS
        teardown = report("teardown")
        assert deferred.adjust(teardown, ("", "", "")) == PLAIN_PASS
        # Asked again (the short summary): the same.
        assert deferred.adjust(teardown, ("", "", "")) == PLAIN_PASS

    def test_a_leak_shows_the_test_as_failed(self) -> None:
        deferred = verdict.DeferredStatus()
        deferred.adjust(report("call", dbleak_checked=True), PLAIN_PASS)
        teardown = report("teardown")
        apply(teardown, leaky())
        assert deferred.adjust(teardown, ("error", "E", "ERROR")) == verdict.FAILED_STATUS

    def test_unchecked_and_failed_calls_are_left_to_pytest(self) -> None:
        deferred = verdict.DeferredStatus()
        assert deferred.adjust(report("call"), PLAIN_PASS) == PLAIN_PASS
        failed = report("call", "failed", dbleak_checked=True)
        assert deferred.adjust(failed, ("failed", "F", "FAILED")) == ("failed", "F", "FAILED")
        assert deferred.adjust(report("teardown"), ("", "", "")) == ("", "", "")


class TestTransport:
    """The frozen result travels on report.dbleak: as itself in the process that made it,
    as its dict to the xdist controller, made again there."""

    def test_the_report_carries_the_result_itself(self) -> None:
        rep = report("teardown")
        result = leaky()
        apply(rep, result)
        assert rep.dbleak is result  # type: ignore[attr-defined]

    def test_the_round_trip_through_pytest_serialisation(self, pytestconfig: pytest.Config) -> None:
        rep = report("teardown")
        apply(rep, leaky())
        late = (("t.py::test_before", leaky().leaks[0]),)
        rep.dbleak_late = late  # type: ignore[attr-defined]
        hook = pytestconfig.hook
        data = hook.pytest_report_to_serializable(config=pytestconfig, report=rep)
        assert isinstance(data["dbleak"], dict)  # plain data, for execnet
        json.dumps(data["dbleak"])
        again = hook.pytest_report_from_serializable(config=pytestconfig, data=data)
        assert again.dbleak == rep.dbleak  # type: ignore[attr-defined]
        assert again.dbleak_late == late
        assert again.failed
