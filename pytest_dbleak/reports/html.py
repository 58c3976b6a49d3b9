"""A self-contained HTML report: a timeline of connections across the run, and every leak.

No pytest import. The chart is inline SVG built here in Python, so it shows without
JavaScript and without network; the small inline script only opens a leak's details when
its marker on the chart is clicked. A Content-Security-Policy forbids every fetch, so a
report can never phone home, even if a test's text contains a URL.

Size stays bounded for big runs: each series is one ``<polyline>`` whose points are
decimated to the chart's pixel columns (keeping each column's first, lowest, highest and
last value, so a one-test spike survives), and only leaking tests get DOM nodes.

Stable hooks for tests and tooling: ``<svg id="timeline">`` with
``<polyline class="series series-server">`` and ``<polyline class="series series-checked-out">``,
``<a class="leak-marker STATUS" href="#leak-N" data-nodeid=...>`` per leaking test, and
``<section id="leaks">`` with one ``<details class="leak STATUS" id="leak-N" data-nodeid=...>``
per leaking test, where STATUS is failed, known, report-only or allowed and N is the test's
1-based position in the run.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.files import write_atomic
from pytest_dbleak.engine.results import KIND_TITLES, KINDS, CheckResult, Leak, Site
from pytest_dbleak.reports import reporting
from pytest_dbleak.reports.chart import (
    HEIGHT,
    LANE_Y,
    LEFT,
    PLOT_H,
    PLOT_W,
    TOP,
    WIDTH,
    nice_ceiling,
    nice_step,
    rounded,
    series_points,
)

log = logging.getLogger(__name__)

# Leak statuses, worst first: the order of the legend and of the summary's counts.
FAILED = "failed"
KNOWN = "known"
REPORT_ONLY = "report-only"
ALLOWED = "allowed"
CLEAN = "clean"
STATUSES = (FAILED, KNOWN, REPORT_ONLY, ALLOWED)
STATUS_TITLES = {
    FAILED: "failed the test",
    KNOWN: "known: in the baseline",
    REPORT_ONLY: "reported only",
    ALLOWED: "within the allowance",
}

PROCESS_COLUMNS = ("id", "user", "host", "db", "command", "time", "state", "trx_started")

# Meta keys that must never reach the page, whatever a caller puts in meta.
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret", re.IGNORECASE)


def status(result: CheckResult) -> str:
    """How a result's leaks were judged: failed, known, report-only, allowed, or clean."""
    if not result.leaks:
        return CLEAN
    if result.failed:
        return FAILED
    if result.known:
        return KNOWN
    if result.report_only:
        return REPORT_ONLY
    return ALLOWED


def render(
    results: list[CheckResult],
    outcomes: dict[str, str],
    meta: dict[str, Any],
    redact: Callable[[str], str],
    leak_failed: Collection[str] | None = None,
) -> str:
    """The whole report as one HTML document; results in run order (x = test index).

    `leak_failed`: the tests that failed because of a leak and nothing else (as in the
    JSON summary); by default, every result over its limit."""
    esc = _Escaper(redact)
    body = "\n".join(
        (
            _header(results, outcomes, meta, esc, leak_failed),
            _timeline(results, esc),
            _leaks(results, outcomes, esc),
        )
    )
    page = _asset("page.html").format(
        title=esc("pytest-dbleak report"),
        css=_asset("report.css"),
        body=body,
        script=_asset("report.js"),
    )
    # Texts were redacted one by one before escaping (a secret with '&' in it would not
    # match once escaped); this last pass catches anything that slipped through.
    return redact(page)


def write(
    path: str | os.PathLike[str],
    results: list[CheckResult],
    outcomes: dict[str, str],
    meta: dict[str, Any],
    redact: Callable[[str], str],
    leak_failed: Collection[str] | None = None,
) -> Path:
    """Render and write the report atomically: readers never see half a file."""
    text = render(results, outcomes, meta, redact, leak_failed)
    target = write_atomic(path, text)
    log.debug("wrote HTML report %s (%d bytes)", target, len(text))
    return target


class _Escaper:
    """Redact, then HTML-escape: every text that reaches the page goes through here."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        self.redact = redact

    def __call__(self, value: object) -> str:
        return html.escape(self.redact(str(value)), quote=True)


# -- header --------------------------------------------------------------------------------
def _header(
    results: list[CheckResult],
    outcomes: dict[str, str],
    meta: Mapping[str, Any],
    esc: _Escaper,
    leak_failed: Collection[str] | None = None,
) -> str:
    statuses = Counter(status(r) for r in results)
    failed_by_leak = (
        statuses[FAILED]
        if leak_failed is None
        else sum(1 for r in results if r.nodeid in leak_failed)
    )
    leaking = sum(statuses[s] for s in STATUSES)
    leaked = sum(r.leaked for r in results)
    peak = max(results, key=lambda r: r.after.server_connections, default=None)
    tally = Counter(outcomes.get(r.nodeid, "unknown") for r in results)

    cards = [
        _card("tests checked", len(reporting.checked(results, outcomes))),  # not skipped ones
        _card("leaking tests", leaking, "bad" if statuses[FAILED] else ("warn" if leaking else "")),
        _card("failed by a leak", failed_by_leak, "bad" if failed_by_leak else ""),
        _card("known (baseline)", statuses[KNOWN]),
        _card("reported only", statuses[REPORT_ONLY]),
        _card("within allowance", statuses[ALLOWED]),
        _card("connections leaked", leaked),
    ]
    if peak is not None:
        cards.append(_card("peak server connections", peak.after.server_connections))
    outcome_text = ", ".join(f"{n} {name}" for name, n in sorted(tally.items())) or "none"

    facts = []
    run = meta.get("run")
    if isinstance(run, Mapping) and run:
        facts.append(("run", _run_fact(run, esc)))
    facts.append(("pytest outcomes", esc(outcome_text)))
    server = meta.get("server")
    if isinstance(server, Mapping) and server:
        where = ""
        if server.get("host") is not None:
            where = f"{server['host']}:{server['port']}" if server.get("port") else server["host"]
        parts = [str(x) for x in (server.get("backend"), where, server.get("version")) if x]
        facts.append(("server", esc(" · ".join(parts))))
    else:
        facts.append(("server", "<em>not started</em>"))
    settings = meta.get("settings")
    if isinstance(settings, Mapping) and settings:
        facts.append(
            (
                "settings",
                esc(
                    ", ".join(
                        f"{k}={v}" for k, v in settings.items() if not _SECRET_KEY.search(str(k))
                    )
                ),
            )
        )
    for key, value in meta.items():
        if key in ("tool", "run", "server", "settings") or _SECRET_KEY.search(str(key)):
            continue
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        facts.append((esc(key), esc(shown)))

    tool = meta.get("tool", "pytest-dbleak")
    return (
        f'<header id="summary">\n<h1>{esc(tool)}: database connection leaks</h1>\n'
        f'<div class="cards">{"".join(cards)}</div>\n<dl class="facts">'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        + "</dl>\n</header>"
    )


def _run_fact(run: Mapping[str, Any], esc: _Escaper) -> str:
    """When the run started (a machine-readable <time>) and how long it took."""
    import datetime

    text = esc(reporting.run_line(run))
    started = run.get("started")
    if not isinstance(started, (int, float)):
        return f'<span id="run">{text}</span>'
    stamp = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).isoformat()
    return f'<time id="run" datetime="{esc(stamp)}">{text}</time>'


def _card(label: str, value: int, tone: str = "") -> str:
    cls = f"card {tone}".strip()
    slug = label.split(" (")[0].replace(" ", "-")
    return (
        f'<div class="{cls}" data-stat="{slug}"><span class="value">{value}</span>'
        f'<span class="label">{html.escape(label)}</span></div>'
    )


# -- timeline ------------------------------------------------------------------------------
def _timeline(results: list[CheckResult], esc: _Escaper) -> str:
    n = len(results)
    server = [r.after.server_connections for r in results]
    checked = [r.after.checked_out for r in results]
    top = nice_ceiling(max([*server, *checked, 1]))

    def y_of(value: float) -> float:
        return TOP + PLOT_H - PLOT_H * min(value, top) / top

    parts = [
        f'<svg id="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'data-left="{LEFT}" data-plot-width="{PLOT_W}" data-tests="{n}" '
        f'aria-label="server and checked-out connections after each of {n} tests">',
        f"<title>Connections after each test ({n} tests)</title>",
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>',
    ]
    ystep = nice_step(top, 5)
    for value in range(0, top + 1, ystep):
        y = rounded(y_of(value))
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT_W}" y2="{y}"/>')
        parts.append(f'<text class="tick y" x="{LEFT - 8}" y="{y}">{value}</text>')
    parts.append(
        f'<text class="axis-title" x="14" y="{TOP + PLOT_H / 2}" '
        f'transform="rotate(-90 14 {TOP + PLOT_H / 2})">connections</text>'
    )
    parts.append(f'<text class="lane-title" x="{LEFT - 8}" y="{LANE_Y}">leaks</text>')

    if n == 0:
        parts.append(
            f'<text class="empty" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}">'
            "no tests were checked</text>"
        )
    else:
        xstep = nice_step(n, 8)
        for index in range(xstep, n + 1, xstep):  # 1-based test numbers
            x = rounded(LEFT + (index - 0.5) * PLOT_W / n)
            parts.append(
                f'<line class="xtick" x1="{x}" y1="{TOP + PLOT_H}" x2="{x}" '
                f'y2="{TOP + PLOT_H + 5}"/>'
            )
            # A centred label at the right edge would be cut off by the SVG's border.
            end = " end" if x > LEFT + PLOT_W - 4 * len(str(index)) else ""
            parts.append(
                f'<text class="tick x{end}" x="{x}" y="{TOP + PLOT_H + 18}">{index}</text>'
            )
        parts.append(
            f'<text class="axis-title x" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}">'
            "test # (run order)</text>"
        )
        for cls, values in (("series-server", server), ("series-checked-out", checked)):
            points = " ".join(f"{x:g},{y:g}" for x, y in series_points(values, y_of))
            parts.append(f'<polyline class="series {cls}" points="{points}"/>')
        parts.extend(_markers(results, y_of, esc))
        parts.append(
            f'<line id="hover-line" x1="0" y1="{TOP}" x2="0" y2="{TOP + PLOT_H}" '
            'visibility="hidden"/>'
        )
    parts.append("</svg>")

    legend = (
        '<ul class="legend">'
        '<li><span class="swatch series-server"></span>server connections of the session</li>'
        '<li><span class="swatch series-checked-out"></span>checked-out pooled connections</li>'
        + "".join(
            f'<li><span class="key {s}"></span>{html.escape(STATUS_TITLES[s])}</li>'
            for s in STATUSES
        )
        + "</ul>"
    )
    return (
        f'<section id="chart"><h2>Timeline</h2>\n<div class="plot-box">{"".join(parts)}'
        '<div id="hover" role="tooltip" hidden></div></div>\n'
        f"{legend}\n{_tests_data(results, esc)}\n"
        '<p class="hint">Counts after each test. Hover for a test\'s name; click a marker '
        "for that test's leak.</p></section>"
    )


def _tests_data(results: Sequence[CheckResult], esc: _Escaper) -> str:
    """Every test's name and counts as one JSON text that the hover reads: one element
    for the whole run, never a DOM node per test."""
    # A test's module is written once: "tests/test_orders.py::test_x" is module 3 + name.
    modules: dict[str, int] = {}
    module_of, names = [], []
    for result in results:
        module, sep, name = esc.redact(result.nodeid).partition("::")
        if not sep:
            module, name = "", module
        module_of.append(modules.setdefault(module, len(modules)))
        names.append(name)
    data = {
        "modules": list(modules),
        "module": module_of,
        "names": names,
        "server": [r.after.server_connections for r in results],
        "checked": [r.after.checked_out for r in results],
    }
    # Inside <script>, only "</" (and "<!--") could end or upset the element.
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="tests-data">{text}</script>'


def _markers(
    results: Sequence[CheckResult], y_of: Callable[[float], float], esc: _Escaper
) -> list[str]:
    n = len(results)
    out = []
    for index, result in enumerate(results, start=1):
        state = status(result)
        if state == CLEAN:
            continue
        x = rounded(LEFT + (index - 0.5) * PLOT_W / n)
        tip = f"#{index} {result.nodeid}\n{STATUS_TITLES[state]}: {_headline(result)}"
        y = rounded(y_of(result.after.server_connections))
        out.append(
            f'<a class="leak-marker {state}" href="#leak-{index}" '
            f'data-nodeid="{esc(result.nodeid)}" data-index="{index}"><title>{esc(tip)}</title>'
            f'<line class="guide" x1="{x}" y1="{LANE_Y + 6}" x2="{x}" y2="{TOP + PLOT_H}"/>'
            f'<circle class="on-series" cx="{x}" cy="{y}" r="3"/>'
            f'<circle class="dot" cx="{x}" cy="{LANE_Y}" r="6"/></a>'
        )
    return out


def _headline(result: CheckResult) -> str:
    """'2 connections leaked (2 checked_out) at app/db.py:42': the terminal's headline."""
    return reporting.headline(result).removeprefix("dbleak: ")


# -- leaks ---------------------------------------------------------------------------------
def _leaks(results: list[CheckResult], outcomes: Mapping[str, str], esc: _Escaper) -> str:
    items = [
        _leak_details(index, result, outcomes.get(result.nodeid, "unknown"), esc)
        for index, result in enumerate(results, start=1)
        if result.leaks
    ]
    if not items:
        inner = '<p class="none">No test leaked a connection.</p>'
    else:
        inner = (
            '<div class="toolbar"><button type="button" id="expand-all">expand all</button>'
            '<button type="button" id="collapse-all">collapse all</button></div>\n'
            + "\n".join(items)
        )
    return f'<section id="leaks"><h2>Leaking tests ({len(items)})</h2>\n{inner}\n</section>'


def _leak_details(index: int, result: CheckResult, outcome: str, esc: _Escaper) -> str:
    state = status(result)
    b, a = result.before, result.after
    facts = [
        f"test #{index}",
        f"pytest outcome: {outcome}",
        f"server connections {b.server_connections} → {a.server_connections}",
        f"{result.counter} {b.threads_connected} → {a.threads_connected}",
        f"checked out {b.checked_out} → {a.checked_out}",
    ]
    if result.allowed:
        facts.append(f"allowed {result.allowed}")
    if result.stress:
        facts.append(f"stress: {result.stress}, {reporting.rate(result)}")
    if result.waited:
        facts.append(f"re-checked for {result.waited:.2f} s")
    body = "".join(_leak_item(leak, esc) for leak in result.leaks)
    return (
        f'<details class="leak {state}" id="leak-{index}" data-nodeid="{esc(result.nodeid)}" '
        f'data-index="{index}" data-status="{state}">'
        f'<summary><span class="badge {state}">{esc(state)}</span> '
        f'<code class="nodeid">{esc(result.nodeid)}</code> '
        f'<span class="headline">{esc(_headline(result))}'
        f"</span></summary>\n"
        f'<div class="body"><p class="counts">{" · ".join(esc(f) for f in facts)}</p>{body}</div>'
        "</details>"
    )


def _leak_item(leak: Leak, esc: _Escaper) -> str:
    title = KIND_TITLES.get(leak.kind, leak.kind)
    rows = [f"<dt>what</dt><dd>{esc(leak.what)}</dd>"]
    if leak.site is not None:
        rows.append(f"<dt>site</dt><dd>{_site(leak.site, esc)}</dd>")
    if leak.thread:
        rows.append(f"<dt>thread</dt><dd>{esc(leak.thread)}</dd>")
    if leak.connection_ids:
        rows.append(
            f"<dt>connection ids</dt><dd>{esc(', '.join(map(str, leak.connection_ids)))}</dd>"
        )
    if leak.stack:
        frames = "".join(f"<li>{_site(site, esc)}</li>" for site in leak.stack)
        rows.append(f'<dt>user stack</dt><dd><ol class="stack">{frames}</ol></dd>')
    elif leak.kind != "server_connection":
        rows.append("<dt>user stack</dt><dd><em>no user code on the stack</em></dd>")
    kind_cls = leak.kind if leak.kind in KINDS else "other"
    # Grouped leaks (issue 13): the heading counts leaks; connections when they differ.
    held = (
        ""
        if leak.count == leak.occurrences
        else f' <span class="held">({esc(reporting.plural(leak.count, "connection"))})</span>'
    )
    return (
        f'<div class="leak-item kind-{kind_cls}"><h4><span class="kind">{esc(leak.kind)}</span>'
        f' &times; {leak.occurrences} <span class="kind-title">{esc(title)}</span>{held}</h4>'
        f"<dl>{''.join(rows)}</dl>{_processlist(leak.processlist, esc)}</div>"
    )


def _site(site: Site, esc: _Escaper) -> str:
    return f"<code>{esc(f'{site.file}:{site.line}')}</code> in <code>{esc(site.function)}</code>"


def _processlist(rows: list[dict[str, Any]], esc: _Escaper) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in PROCESS_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(row[c]) if row.get(c) is not None else ''}</td>" for c in PROCESS_COLUMNS
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<table class="processlist"><caption>processlist rows left behind</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


# -- page ----------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")
