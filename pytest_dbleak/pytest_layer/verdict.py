"""Puts a leak check's verdict on pytest's reports. No hook code: the manager decides
when, this module decides what a report says.

A test's window closes inside its teardown, so its verdict travels on the teardown
report: a leak makes that report fail. The test's own call report is shown through the
teardown report's status (see ``DeferredStatus``), so one leaky test reads as one
``FAILED`` test, not as a pass plus an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_dbleak.engine.results import CheckResult
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
    teardown.dbleak = result.as_dict()  # type: ignore[attr-defined]  # travels with xdist
    if not result.leaks:
        return
    teardown.user_properties.append(("dbleak_leaked", result.leaked))
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


class DeferredStatus:
    """Shows a checked test's passing call through its teardown report.

    A passing call is not the test's verdict yet: its window closes in teardown. The
    call report is logged with no status (as pytest logs a passing setup), and the
    teardown report then carries the call's own status (``PASSED``) - or ``FAILED``
    when the test leaked. Other call outcomes (failed, skipped, xfailed, xpassed) are
    final and are shown as pytest shows them.
    """

    def __init__(self) -> None:
        self._held: dict[str, Any] = {}

    def status(self, report: pytest.TestReport, config: pytest.Config) -> Any:
        if getattr(report, "_dbleak_asking", False):
            return None  # our own question to the other implementations
        if report.when == "call":
            self._held.pop(report.nodeid, None)
            if (
                getattr(report, "dbleak_checked", False)
                and report.outcome == "passed"
                and not hasattr(report, "wasxfail")
            ):
                self._held[report.nodeid] = self._default(report, config)
                return HIDDEN_STATUS
            return None
        if report.when == "teardown":
            # Not popped: the short summary asks for the status again at the end.
            held = self._held.get(report.nodeid)
            if getattr(report, "dbleak_failed", False) and report.outcome == "failed":
                return FAILED_STATUS
            if held is not None and report.outcome == "passed":
                return held
        return None

    def _default(self, report: pytest.TestReport, config: pytest.Config) -> Any:
        report._dbleak_asking = True  # type: ignore[attr-defined]
        try:
            return config.hook.pytest_report_teststatus(report=report, config=config)
        finally:
            del report._dbleak_asking
