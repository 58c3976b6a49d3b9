"""Turns check results into what people read: failure text, summary, JSON report.

No hook code here: the manager decides when; this module decides how it reads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pytest_dbleak.engine.files import write_atomic
from pytest_dbleak.engine.results import KIND_TITLES, KINDS, LOCK_WAIT, CheckResult, Leak

SECTION = "dbleak"
REPORT_VERSION = 1
_PROCESS_COLUMNS = ("id", "user", "host", "db", "command", "time", "state", "trx_started")
TIMES = "\N{MULTIPLICATION SIGN}"  # "48 TIMES checked-out connection never returned"
FOLD = 5  # ids and processlist rows shown before the rest is folded into a count


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def rate(result: CheckResult) -> str:
    """'4 connections leaked over 100 runs (1 in 25)' for stressed tests."""
    stuck = sum(1 for leak in result.leaks if leak.kind == LOCK_WAIT)
    if stuck and not result.leaked:  # a statement stuck behind a lock, no connection
        text = f"{plural(stuck, 'statement')} stuck behind a lock"
        return text + (f" over {plural(result.runs, 'run')}" if result.runs else "")
    text = f"{plural(result.leaked, 'connection')} leaked"
    if result.runs:
        text += f" over {plural(result.runs, 'run')}"
        if result.leaked:
            text += f" (1 in {max(1, round(result.runs / result.leaked))})"
    return text


def headline(result: CheckResult) -> str:
    """The one line that stands in pytest's short summary."""
    site = next((leak.site for leak in result.leaks if leak.site), None)
    where = f" at {site.file}:{site.line}" if site else ""
    parts = _kind_counts(result)
    allowed = f", {result.allowed} allowed" if result.allowed else ""
    return f"dbleak: {rate(result)}{allowed} ({parts}){where}"


def _kind_order(item: tuple[str, int]) -> int:
    return KINDS.index(item[0])


def _kind_counts(result: CheckResult) -> str:
    """'2 checked_out, 1 server_connection': leaked connections per kind."""
    kinds: Counter[str] = Counter()
    for leak in result.leaks:
        kinds[leak.kind] += leak.count
    return ", ".join(
        f"{n} {kind}" if n else kind
        for kind, n in sorted(kinds.items(), key=_kind_order)
        if n or kind == LOCK_WAIT  # a stuck statement counts no connection
    )


def failure_text(result: CheckResult) -> str:
    """What leaked and where: the body of the failure."""
    lines = [headline(result), ""]
    for leak in result.leaks:
        lines.extend(_leak_lines(leak))
    return "\n".join(lines).rstrip() + "\n"


def _leak_lines(leak: Leak) -> list[str]:
    # The prefix counts leaks, not connections: one engine holding two connections is
    # one "engine created and never disposed".
    count = f"{leak.occurrences} {TIMES} " if leak.occurrences > 1 else ""
    lines = [f"{count}{KIND_TITLES[leak.kind]}: {leak.what}"]
    if leak.occurrences > 1 and len(leak.connection_ids) > 1:
        lines.append(f"    connection ids: {folded(leak.connection_ids)}")
    threads = [t for t in (leak.thread or "").split(", ") if t and t != "MainThread"]
    if threads:
        lines.append(f"    in {'thread' if len(threads) == 1 else 'threads'} {folded(threads)}")
    if leak.stack:
        for site in leak.stack:
            lines.append(f"    {site}")
    elif leak.kind != "server_connection":
        lines.append("    (no user code on the stack)")
    lines.append("")
    return lines


def folded(items: Sequence[object], shown: int = FOLD) -> str:
    """'5, 6, 7, 8, 9 and 43 more': the first few of a long list, and how many are left."""
    head = ", ".join(str(i) for i in items[:shown])
    rest = len(items) - shown
    return f"{head} and {rest} more" if rest > 0 else head


def section_text(result: CheckResult) -> str:
    """The named report section: counters and the server's processlist rows."""
    b, a = result.before, result.after
    lines = [
        f"server connections of the session: {b.server_connections} before, "
        f"{a.server_connections} after",
        f"{result.counter}: {b.threads_connected} before, {a.threads_connected} after",
        f"checked-out pooled connections: {b.checked_out} before, {a.checked_out} after",
    ]
    if result.waited:
        lines.append(f"re-checked for {result.waited:.2f} s before declaring the leak")
    rows = [row for leak in result.leaks for row in leak.processlist]
    if rows:
        lines.append("")
        lines.append("processlist rows left behind:")
        lines.extend(_table(rows[:FOLD]))
        if len(rows) > FOLD:
            lines.append(f"  … and {plural(len(rows) - FOLD, 'more row')} (all in the JSON report)")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [
        [str(r.get(c) if r.get(c) is not None else "") for c in _PROCESS_COLUMNS] for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_PROCESS_COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*_PROCESS_COLUMNS).rstrip()] + [
        "  " + fmt.format(*c).rstrip() for c in cells
    ]


def header_line(backend: str, host: str, port: int | None, version: str) -> str:
    """pytest's header line: which server the run checks against."""
    where = f"{host}:{port}" if port else host
    return f"dbleak: {backend} backend, server {version} at {where}"


def checked(results: Iterable[CheckResult], outcomes: Mapping[str, str]) -> list[CheckResult]:
    """Results of tests that ran: a test skipped in its setup was not checked."""
    return [r for r in results if outcomes.get(r.nodeid) != "skipped"]


def clean_line(n_checked: int) -> str:
    return f"dbleak: no leaks in {plural(n_checked, 'checked test')}"


def summary_lines(results: Iterable[CheckResult]) -> list[str]:
    """One line per test that leaked: what and how much."""
    lines = []
    for result in results:
        if not result.leaks:
            continue
        what = _kind_counts(result)
        first = next((leak.site for leak in result.leaks if leak.site), None)
        where = f" at {first.file}:{first.line}" if first else ""
        note = ""
        if result.known:
            note = " [known: in the baseline]"
        elif result.report_only:
            note = " [reported only]"
        elif not result.failed:
            note = f" [within allow={result.allowed}]"
        lines.append(f"{result.nodeid}: {rate(result)} ({what}){where}{note}")
    return lines


def report_document(
    results: list[CheckResult],
    outcomes: Mapping[str, str],
    meta: Mapping[str, Any],
    leak_failed: Collection[str] | None = None,
    other_failed: int = 0,
) -> dict[str, Any]:
    """The JSON report as a dict: what ``write_json`` writes and ``merge`` reads back.

    `leak_failed`: the tests that failed because of a leak and nothing else (a test that
    failed on its own and also leaked is not one); by default, every result over its limit.
    `other_failed`: how many tests of the run failed for another reason (checked or not),
    so that merged shard reports give the exit status one run would have."""
    leak_failed = _leak_failed(results, leak_failed)
    return {
        **_head(results, meta, leak_failed, other_failed),
        "tests": [_entry(r, outcomes, leak_failed) for r in results],
    }


def _leak_failed(
    results: list[CheckResult], leak_failed: Collection[str] | None
) -> Collection[str]:
    return {r.nodeid for r in results if r.failed} if leak_failed is None else leak_failed


def _head(
    results: list[CheckResult],
    meta: Mapping[str, Any],
    leak_failed: Collection[str],
    other_failed: int,
) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        **meta,
        "summary": {
            "tests": len(results),
            "leaking_tests": sum(1 for r in results if r.leaks),
            "failed_tests": sum(1 for r in results if r.nodeid in leak_failed),
            "other_failed_tests": other_failed,
            "leaked_connections": sum(r.leaked for r in results),
        },
    }


def _entry(
    result: CheckResult, outcomes: Mapping[str, str], leak_failed: Collection[str]
) -> dict[str, Any]:
    entry = result.as_dict()
    entry["outcome"] = outcomes.get(result.nodeid, "unknown")
    entry["leak_failed"] = result.nodeid in leak_failed
    return entry


def write_json(
    path: str | os.PathLike[str],
    results: list[CheckResult],
    outcomes: Mapping[str, str],
    meta: Mapping[str, Any],
    redact: Callable[[str], str],
    leak_failed: Collection[str] | None = None,
    other_failed: int = 0,
) -> None:
    """Write :func:`report_document` to path, redacted, atomically.

    Test by test: at 20,000 tests the whole document as dicts and one string would cost
    the run about 100 MB at its very end; entries are made, written and dropped in turn.
    """
    leak_failed = _leak_failed(results, leak_failed)
    head = _head(results, meta, leak_failed, other_failed)
    # The head's text with an empty "tests" list, split where the entries go.
    text = json.dumps({**head, "tests": [None]}, indent=2, default=str)
    before, after = text.rsplit("null", 1)

    def pieces() -> Iterator[str]:
        yield redact(before.rstrip(" "))
        for index, result in enumerate(results):
            entry = json.dumps(_entry(result, outcomes, leak_failed), indent=2, default=str)
            sep = ",\n" if index else ""
            yield sep + redact(_ENTRY_INDENT + entry.replace("\n", "\n" + _ENTRY_INDENT))
        yield redact(after.lstrip(" ") if results else after) + "\n"

    if not results:  # "tests": [] as json.dumps writes it
        text = json.dumps({**head, "tests": []}, indent=2, default=str)
        write_atomic(path, redact(text) + "\n")
        return
    write_atomic(path, pieces())


_ENTRY_INDENT = "    "  # an entry of the top-level "tests" list, as indent=2 places it


def run_line(run: Mapping[str, Any]) -> str:
    """'2026-12-05 11:30:03 UTC, 12.3 s': when a run started and how long it took."""
    import datetime

    parts = []
    started = run.get("started")
    if isinstance(started, (int, float)):
        when = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc)
        parts.append(when.strftime("%Y-%m-%d %H:%M:%S UTC"))
    duration = run.get("duration")
    if isinstance(duration, (int, float)):
        parts.append(f"{duration:.1f} s" if duration < 120 else f"{duration / 60:.1f} min")
    shards = run.get("shards")
    if isinstance(shards, int) and shards > 1:
        parts.append(f"{shards} shards merged")
    return ", ".join(parts)
