"""What the manager says at the end of a run: the JSON and HTML reports, the baseline's
line, and the terminal summary. Reads the manager's results; keeps no state of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from pytest_dbleak.reports import reporting

if TYPE_CHECKING:
    from pytest_dbleak.engine.errors import Redactor
    from pytest_dbleak.engine.lockwatch import Resolution
    from pytest_dbleak.engine.results import CheckResult
    from pytest_dbleak.engine.runtime import Runtime
    from pytest_dbleak.engine.settings import Settings
    from pytest_dbleak.reports.baseline import Baseline


class DbleakManager(Protocol):
    """What this module reads of the manager (and the two lines it writes back):
    declared here so that the manager imports this module and not the other way."""

    settings: Settings
    results: dict[str, CheckResult]
    outcomes: dict[str, str]
    leak_failures: set[str]
    other_failures: set[str]
    baseline: Baseline | None
    recording: bool
    redact: Redactor
    _baseline_line: str
    _written: list[str]
    _resolutions: list[Resolution]
    _stuck_lines: list[str]
    _started: float

    @property
    def tested_runtime(self) -> Runtime: ...


def terminal_summary(m: DbleakManager, terminalreporter: Any) -> None:
    if m._baseline_line:
        terminalreporter.write_line(m.redact(m._baseline_line))
    stuck = [r.line for r in m._resolutions] + m._stuck_lines
    if stuck:
        terminalreporter.write_sep("=", "dbleak: stuck behind a leak", yellow=True)
        for line in stuck:
            terminalreporter.write_line(m.redact(f"dbleak: {line}"))
    lines = reporting.summary_lines(m.results.values())
    if lines:
        title = f"dbleak: {reporting.plural(len(lines), 'test')} leaked connections"
        terminalreporter.write_sep("=", title, yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(m.redact(line))
    else:
        checked = reporting.checked(m.results.values(), m.outcomes)
        if m.settings.enabled and checked:
            terminalreporter.write_sep("-", reporting.clean_line(len(checked)))
    for written in m._written:  # last: where to look next
        terminalreporter.write_line(f"dbleak: {written}")


def write_reports(m: DbleakManager) -> None:
    results = list(m.results.values())
    if m.settings.baseline and m.settings.enabled:
        from pytest_dbleak.reports import (
            baseline,  # imported when asked for: a quick run never pays it
        )

        if m.recording:
            recorded = baseline.save(m.settings.baseline, results)
            m._baseline_line = baseline.recorded_line(m.settings.baseline, recorded)
        elif m.baseline is not None:
            checked = reporting.checked(results, m.outcomes)
            # A recorded test that was skipped or not run here (another shard, -k)
            # says nothing about its leak: only checked tests can call one gone.
            m._baseline_line = m.baseline.summary(checked)
            if m.baseline.gone(checked):
                path = m.settings.baseline
                m._baseline_line += (
                    f"; to shrink the baseline, delete {path} and run again to re-record it"
                )
    if not (m.settings.report or m.settings.html) or not results:
        return
    meta = {
        "tool": "pytest-dbleak",
        "run": {"started": m._started, "duration": time.time() - m._started},
        "server": _server_meta(m),
        "settings": {
            "allow": m.settings.allow,
            "settle_timeout": m.settings.settle_timeout,
            "report_only": m.settings.report_only,
        },
    }
    if m.settings.report:
        reporting.write_json(
            m.settings.report,
            results,
            m.outcomes,
            meta,
            m.redact,
            leak_failed=m.leak_failures,
            other_failed=len(m.other_failures),
        )
        m._written.append(f"JSON report written to {m.settings.report}")
    if m.settings.html:
        from pytest_dbleak.reports import html as html_report

        html_report.write(
            m.settings.html,
            results,
            m.outcomes,
            meta,
            m.redact,
            leak_failed=m.leak_failures,
        )
        m._written.append(f"HTML report written to {m.settings.html}")


def _server_meta(m: DbleakManager) -> dict[str, Any]:
    runtime = m.tested_runtime
    info = runtime.info
    if info is None:
        return {}
    family = runtime.family
    return {
        "family": family.name,
        "counter": family.counter,
        "backend": info.backend,
        "host": info.host,
        "port": info.port,
        "version": info.version,
    }
