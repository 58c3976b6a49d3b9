"""Puts a leak check's verdict on pytest's reports. No hook code: the manager decides
when, this module decides what a report says.

A test's window closes inside its teardown, so its verdict travels on the teardown
report: a leak makes that report fail. The test's own call report is shown through the
teardown report's status (see ``DeferredStatus``), so one leaky test reads as one
``FAILED`` test, not as a pass plus an error.

The frozen result itself travels on one report attribute, ``report.dbleak``: read as it
is in the process that made it, sent to the xdist controller as its dict and made again
there (``to_serializable`` / ``from_serializable``). Leaks an earlier test's threads
opened travel beside it, on ``report.dbleak_late``, the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_dbleak.engine.results import CheckResult, Leak
from pytest_dbleak.pytest_layer._pytest_seam import failure_repr
from pytest_dbleak.reports import reporting

FAILED_STATUS = ("failed", "F", "FAILED")  # a plain word: pytest 8.0 prints a tuple as is
HIDDEN_STATUS = ("", "", "")

Redact = Callable[[str], str]


def apply(
    teardown: pytest.TestReport,
    result: CheckResult,
    *,
    own_failure: bool,
    location: tuple[str, int],
    redact: Redact,
    note: str = "",
) -> None:
    """Record `result` on the teardown report; fail it when the leak fails the test.

    With `own_failure` (the test's setup or call already failed) the test keeps its own
    error and the leak text rides along in ``dbleak_section``, for the manager to add to
    the report that failed.
    """
    teardown.dbleak = result  # type: ignore[attr-defined]
    if not result.leaks:
        return
    teardown.user_properties.append(("dbleak_leaked", result.leaked))
    # The server's own counter of client connections, by its own name (MySQL's
    # Threads_connected, PostgreSQL's numbackends), before and after the test.
    counts = f"{result.before.threads_connected} -> {result.after.threads_connected}"
    teardown.user_properties.append((f"dbleak_{result.counter}", counts))
    details = redact(reporting.section_text(result))
    text = redact((note + "\n" if note else "") + reporting.failure_text(result))
    if not result.failed or own_failure:
        section = text + "\n" + details
        if own_failure:
            teardown.dbleak_section = section  # type: ignore[attr-defined]
        else:  # tolerated: shown with -rA / -rP, never failing
            teardown.sections.append((reporting.SECTION, section))
        return
    site = next((leak.site for leak in result.leaks if leak.site), None)
    path, line = (site.file, site.line) if site else location
    teardown.sections.append((reporting.SECTION, details))
    teardown.outcome = "failed"
    teardown.longrepr = failure_repr(text, path, line, redact(reporting.headline(result)))
    teardown.dbleak_failed = True  # type: ignore[attr-defined]
    teardown.user_properties.append(("dbleak_failed", True))


def server_gone(teardown: pytest.TestReport, message: str, location: tuple[str, int]) -> None:
    """The server stopped answering during this test's window."""
    if not teardown.failed:
        teardown.outcome = "failed"
        teardown.longrepr = failure_repr(message, *location, message)


def carry_section(teardown: pytest.TestReport, failed: pytest.TestReport | None) -> None:
    """Move the leak text of a test that failed on its own onto the report that failed,
    which pytest prints at the end of the run."""
    section = getattr(teardown, "dbleak_section", None)
    if section is None:
        return
    target = failed if failed is not None else teardown
    target.sections.append((reporting.SECTION, section))


def to_serializable(report: Any, data: Any) -> Any:
    """`data`, pytest's serialisable form of `report`, with the result as its dict."""
    if not isinstance(data, dict):
        return data
    result = getattr(report, "dbleak", None)
    if isinstance(result, CheckResult):
        data["dbleak"] = result.as_dict()
    late = getattr(report, "dbleak_late", None)
    if late:
        data["dbleak_late"] = [{"nodeid": nodeid, "leak": leak.as_dict()} for nodeid, leak in late]
    return data


def from_serializable(report: Any) -> Any:
    """A report made again from its serialisable form: its result made again too."""
    data = getattr(report, "dbleak", None)
    if isinstance(data, dict):
        report.dbleak = CheckResult.from_dict(data)
    late = getattr(report, "dbleak_late", None)
    if late and isinstance(late[0], dict):
        report.dbleak_late = tuple((x["nodeid"], Leak.from_dict(x["leak"])) for x in late)
    return report


class DeferredStatus:
    """Shows a checked test's passing call through its teardown report.

    A passing call is not the test's verdict yet: its window closes in teardown. The
    call report is logged with no status (as pytest logs a passing setup), and the
    teardown report then carries the call's own status (``PASSED``) - or ``FAILED``
    when the test leaked. Other call outcomes (failed, skipped, xfailed, xpassed) are
    final and are shown as pytest shows them.

    ``adjust`` takes the status the other implementations of
    ``pytest_report_teststatus`` gave (the manager's hook wraps them) and returns the
    one to show.
    """

    def __init__(self) -> None:
        self._held: dict[str, Any] = {}

    def adjust(self, report: pytest.TestReport, status: Any) -> Any:
        if report.when == "call":
            self._held.pop(report.nodeid, None)
            if (
                getattr(report, "dbleak_checked", False)
                and report.outcome == "passed"
                and not hasattr(report, "wasxfail")
            ):
                self._held[report.nodeid] = status
                return HIDDEN_STATUS
            return status
        if report.when == "teardown":
            # Not popped: the short summary asks for the status again at the end.
            held = self._held.get(report.nodeid)
            if getattr(report, "dbleak_failed", False) and report.outcome == "failed":
                return FAILED_STATUS
            if held is not None and report.outcome == "passed":
                return held
        return status
