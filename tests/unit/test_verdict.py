"""What a check's verdict does to pytest's reports (verdict.py), on real TestReports."""

from __future__ import annotations

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
    assert rep.dbleak["leaked"] == 0  # type: ignore[attr-defined]
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


class TestDeferredStatus:
    """A passing call of a checked test is shown by its teardown report."""

    def status(
        self, deferred: verdict.DeferredStatus, rep: pytest.TestReport, pytestconfig: pytest.Config
    ) -> Any:
        return deferred.status(rep, pytestconfig)

    def test_a_passing_call_is_hidden_and_its_status_shown_at_teardown(
        self, pytestconfig: pytest.Config
    ) -> None:
        deferred = verdict.DeferredStatus()
        call = report("call", dbleak_checked=True)
        assert self.status(deferred, call, pytestconfig) == verdict.HIDDEN_STATUS
        teardown = report("teardown")
        shown = self.status(deferred, teardown, pytestconfig)
        assert shown[0] == "passed"
        assert self.status(deferred, teardown, pytestconfig) == shown  # asked again: same

    def test_a_leak_shows_the_test_as_failed(self, pytestconfig: pytest.Config) -> None:
        deferred = verdict.DeferredStatus()
        self.status(deferred, report("call", dbleak_checked=True), pytestconfig)
        teardown = report("teardown")
        apply(teardown, leaky())
        assert self.status(deferred, teardown, pytestconfig) == verdict.FAILED_STATUS

    def test_unchecked_and_failed_calls_are_left_to_pytest(
        self, pytestconfig: pytest.Config
    ) -> None:
        deferred = verdict.DeferredStatus()
        assert self.status(deferred, report("call"), pytestconfig) is None
        failed = report("call", "failed", dbleak_checked=True)
        assert self.status(deferred, failed, pytestconfig) is None
        assert self.status(deferred, report("teardown"), pytestconfig) is None
