"""``python -m pytest_dbleak``: merge shard reports into one verdict; stop a reused server.

No pytest import: the merge runs in a CI job that only downloads the shards' JSON reports.

Exit statuses follow a pytest run's: 0 no failure, 1 a test failed for its own reason,
6 only leaks failed tests, 4 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.results import CheckResult, conclude
from pytest_dbleak.reports import reporting

EXIT_OK = 0
EXIT_TESTS_FAILED = 1
EXIT_USAGE = 4
EXIT_LEAKS_FOUND = 6  # as manager.EXIT_LEAKS_FOUND, without importing pytest


@dataclass
class Merged:
    """Shard reports read back as one run, in the order the reports were given."""

    results: dict[str, CheckResult] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    leak_failed: set[str] = field(default_factory=set)
    other_failed: int = 0
    metas: list[dict[str, Any]] = field(default_factory=list)

    def add(self, document: dict[str, Any], source: str) -> None:
        summary = document.get("summary") or {}
        other = summary.get("other_failed_tests", 0)
        self.other_failed += other if isinstance(other, int) else 0
        self.metas.append(document)
        for entry in document["tests"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("nodeid"), str):
                raise DbleakError(f"{source}: a test entry without a nodeid")
            data = dict(entry)
            outcome = str(data.pop("outcome", "unknown"))
            leak_failed = data.pop("leak_failed", None)
            try:
                result = CheckResult.from_dict(data)
            except (TypeError, ValueError, KeyError) as exc:
                nodeid = entry["nodeid"]
                raise DbleakError(f"{source}: {nodeid}: unreadable entry ({exc})") from None
            if leak_failed is None:  # a report of an older version: its best guess
                leak_failed = result.failed and outcome == "failed"
            previous = self.results.get(result.nodeid)
            if previous is not None and previous.leaked >= result.leaked:
                continue  # the same test in two shards: the leakier run stands
            self.results[result.nodeid] = result
            self.outcomes[result.nodeid] = outcome
            if leak_failed:
                self.leak_failed.add(result.nodeid)
            else:
                self.leak_failed.discard(result.nodeid)

    def exit_status(self) -> int:
        if self.other_failed:
            return EXIT_TESTS_FAILED
        return EXIT_LEAKS_FOUND if self.leak_failed else EXIT_OK

    def meta(self) -> dict[str, Any]:
        """The first shard's server and settings; the run spans every shard."""
        first = self.metas[0] if self.metas else {}
        runs = [m["run"] for m in self.metas if isinstance(m.get("run"), dict)]
        starts = [r["started"] for r in runs if isinstance(r.get("started"), (int, float))]
        ends = [
            r["started"] + r["duration"]
            for r in runs
            if isinstance(r.get("started"), (int, float))
            and isinstance(r.get("duration"), (int, float))
        ]
        run: dict[str, Any] = {"shards": len(self.metas)}
        if starts:
            run["started"] = min(starts)
        if starts and ends:
            run["duration"] = max(ends) - min(starts)  # wall time of shards run in parallel
        return {
            "tool": "pytest-dbleak",
            "run": run,
            "server": first.get("server", {}),
            "settings": first.get("settings", {}),
        }


def read_report(path: str) -> dict[str, Any]:
    """A shard's JSON report, or DbleakError saying in one line what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DbleakError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise DbleakError(f"{path}: cannot be read ({why})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DbleakError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict) or document.get("tool") != "pytest-dbleak":
        raise DbleakError(
            f"{path}: not a pytest-dbleak report (write one with --dbleak-report=PATH)"
        )
    if document.get("version") != reporting.REPORT_VERSION:
        raise DbleakError(
            f"{path}: report version {document.get('version')!r}; this pytest-dbleak reads "
            f"version {reporting.REPORT_VERSION}"
        )
    if not isinstance(document.get("tests"), list):
        raise DbleakError(f"{path}: 'tests' must be a list")
    return document


def merge(
    paths: Sequence[str], report: str, html: str | None = None, baseline_path: str | None = None
) -> int:
    """Merge shard reports into one report (and page, and baseline); the exit status."""
    from pytest_dbleak.reports import baseline

    merged = Merged()
    for path in paths:
        merged.add(read_report(path), path)
    results = list(merged.results.values())
    lines = []
    if baseline_path:
        recorded = baseline.load(baseline_path)
        if recorded is None:
            saved = baseline.save(baseline_path, results)
            lines.append(baseline.recorded_line(baseline_path, saved))
        else:
            # As each shard did, if it gated on the same file: a result is frozen, so a
            # known one is a new result in its place.
            merged.results = {
                nodeid: conclude(result, known=recorded.knows)
                for nodeid, result in merged.results.items()
            }
            results = list(merged.results.values())
            merged.leak_failed = {n for n in merged.leak_failed if merged.results[n].failed}
            lines.append(recorded.summary(reporting.checked(results, merged.outcomes)))
    meta = merged.meta()
    reporting.write_json(
        report,
        results,
        merged.outcomes,
        meta,
        _no_redaction,
        leak_failed=merged.leak_failed,
        other_failed=merged.other_failed,
    )
    if html:
        from pytest_dbleak.reports import html as html_report

        html_report.write(
            html, results, merged.outcomes, meta, _no_redaction, leak_failed=merged.leak_failed
        )
    leaking = reporting.summary_lines(results)
    if leaking:
        lines.append(f"dbleak: {reporting.plural(len(leaking), 'test')} leaked connections")
        lines.extend(leaking)
    else:
        lines.append(reporting.clean_line(len(reporting.checked(results, merged.outcomes))))
    status = merged.exit_status()
    written = ", ".join(p for p in (report, html) if p)
    lines.append(
        f"dbleak: merged {reporting.plural(len(paths), 'report')} "
        f"({reporting.plural(len(results), 'test')}) into {written}; exit status {status}"
    )
    print("\n".join(lines))
    return status


def _no_redaction(text: str) -> str:
    return text  # shard reports were redacted when written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dbleak", description="pytest-dbleak tools (no pytest needed)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser(
        "merge",
        help="merge the JSON reports of CI shards into one verdict",
        description="Merge the --dbleak-report files of shards into one report; the exit "
        "status is a single run's (0 clean, 6 only leaks failed, 1 other failures).",
    )
    m.add_argument("reports", nargs="+", metavar="REPORT.json")
    m.add_argument("--report", required=True, metavar="OUT.json", help="the merged report")
    m.add_argument("--html", metavar="OUT.html", help="also write the merged HTML report")
    m.add_argument(
        "--baseline",
        metavar="PATH",
        help="record the merged leaks to PATH, or, if PATH exists, judge them against it",
    )
    s = commands.add_parser(
        "stop",
        help="stop the server that --dbleak-reuse keeps running",
        description="Stop the reused server(s) of this OS user in the cache folder.",
    )
    s.add_argument("--cache-dir", metavar="DIR", help="the --dbleak-cache-dir of the runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            return merge(args.reports, args.report, args.html, args.baseline)
        return _stop(args.cache_dir)
    except DbleakError as exc:
        print(f"dbleak: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # an output path that cannot be written
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"dbleak: cannot write the output{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


def _stop(cache_dir: str | None) -> int:
    import os

    from pytest_dbleak.engine.settings import Settings
    from pytest_dbleak.families import _reuse

    cache = Settings(cache_dir=cache_dir or os.environ.get("DBLEAK_CACHE_DIR")).template_cache
    stopped = _reuse.stop_all(cache)  # every family's
    if stopped:
        for line in stopped:
            print(f"dbleak: stopped {line}")
    else:
        print(f"dbleak: no reused server is running (cache folder {cache})")
    return EXIT_OK
