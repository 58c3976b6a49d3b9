"""The HTML report: self-contained, escaped, redacted, and small for big runs."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_dbleak.engine.errors import Redactor
from pytest_dbleak.engine.results import (
    CHECKED_OUT,
    GC_RETURN,
    SERVER_CONNECTION,
    CheckResult,
    Counts,
    Leak,
    Site,
)
from pytest_dbleak.reports import chart
from pytest_dbleak.reports import html as hr

SECRET = "s3cr3t&<pw>"  # HTML-special characters: must be redacted before escaping


def identity(text: str) -> str:
    return text


def leak(kind: str = CHECKED_OUT, count: int = 1, what: str = "QueuePool connection") -> Leak:
    return Leak(
        kind,
        count,
        what,
        Site("app/db.py", 42, "get_conn"),
        [Site("tests/test_app.py", 10, "test_x"), Site("app/db.py", 42, "get_conn")],
        "Worker-1",
        [1234],
        [
            {
                "id": 1234,
                "user": "dbleak_main",
                "host": "localhost:5555",
                "db": "dbleak_main",
                "command": "Sleep",
                "time": 7,
                "state": "",
                "trx_started": "2025-01-02 03:04:05",
            }
        ],
    )


def run(n: int, leaking: dict[int, CheckResult] | None = None) -> list[CheckResult]:
    """n results; server connections 3 and checked_out 0 except where a leak bumps them."""
    out = []
    for i in range(n):
        r = (leaking or {}).get(i) or CheckResult(f"tests/t.py::test_{i}")
        after = Counts(server_connections=3 + i % 2, threads_connected=5, checked_out=0)
        out.append(replace(r, after=after))  # results are frozen
    return out


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Collector(HTMLParser):
    """Every element with its attributes and the text directly inside it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in ("meta", "br", "circle", "line", "rect", "polyline"):
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (cls is None or cls in e.classes)]

    def by_id(self, ident: str) -> Element:
        [element] = [e for e in self.elements if e.attrs.get("id") == ident]
        return element


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    collector.close()
    return collector


def points(polyline: Element) -> list[tuple[float, float]]:
    raw = polyline.attrs["points"].split()
    return [(float(x), float(y)) for x, y in (p.split(",") for p in raw)]


def y_to_value(y: float, top: int) -> float:
    return round((hr.TOP + hr.PLOT_H - y) * top / hr.PLOT_H, 3)


@pytest.fixture
def mixed() -> list[CheckResult]:
    failed = CheckResult("tests/t.py::test_1", [leak()])
    known = CheckResult("tests/t.py::test_3", [leak(GC_RETURN)], known=True)
    report_only = CheckResult("tests/t.py::test_5", [leak(SERVER_CONNECTION, 2)], report_only=True)
    allowed = CheckResult("tests/t.py::test_7", [leak()], allowed=1)
    return run(10, {1: failed, 3: known, 5: report_only, 7: allowed})


# -- self-contained and safe ---------------------------------------------------------------
def test_report_is_one_self_contained_document(mixed: list[CheckResult]) -> None:
    text = hr.render(mixed, {}, {"tool": "pytest-dbleak"}, identity)
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text
    assert "https://" not in text
    assert "//" not in re.sub(r"<script>.*?</script>", "", text, flags=re.S)  # no URL at all
    doc = parse(text)
    assert not doc.find("link")
    assert not [e for e in doc.elements if "src" in e.attrs]
    [csp] = [m for m in doc.find("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"]
    assert len(doc.find("style")) == 1
    scripts = doc.find("script")
    assert [e.attrs.get("type") for e in scripts] == ["application/json", None]  # data, code


def test_every_text_is_escaped() -> None:
    evil = '<img src=x onerror="alert(1)">&"'
    bad = Leak(
        CHECKED_OUT,
        1,
        evil,
        Site(evil, 1, evil),
        [Site(evil, 2, evil)],
        evil,
        [],
        [{"id": 1, "user": evil, "host": evil, "command": evil, "state": evil}],
    )
    results = [CheckResult(f"tests/t.py::test[{evil}]", [bad])]
    text = hr.render(results, {results[0].nodeid: evil}, {"note": evil}, identity)
    assert "<img" not in text
    assert 'onerror="' not in text
    doc = parse(text)
    assert not doc.find("img")
    [details] = doc.find("details", "leak")
    assert details.attrs["data-nodeid"] == f"tests/t.py::test[{evil}]"  # round-trips
    [marker] = doc.find("a", "leak-marker")
    assert marker.attrs["data-nodeid"] == details.attrs["data-nodeid"]


def test_secrets_are_redacted_even_with_html_special_characters(
    mixed: list[CheckResult],
) -> None:
    mixed[1].leaks[0].what = f"engine for mysql+pymysql://u:{SECRET}@db/x"
    mixed[1].leaks[0].processlist[0]["host"] = f"host-{SECRET}"
    mixed[1] = replace(mixed[1], nodeid=f"tests/t.py::test_url[{SECRET}]")  # frozen
    meta = {
        "server": {"backend": "url", "host": "db", "port": 3306, "version": "8.4"},
        "url": f"mysql://root:{SECRET}@db:3306",
    }
    text = hr.render(mixed, {}, meta, Redactor([SECRET]))
    assert SECRET not in text
    assert "s3cr3t" not in text  # not even the escaped form s3cr3t&amp;&lt;pw&gt;
    assert "***" in text


def test_the_whole_output_goes_through_redact(mixed: list[CheckResult]) -> None:
    seen: list[str] = []

    def spy(text: str) -> str:
        seen.append(text)
        return text.replace("pytest-dbleak", "REDACTED")

    text = hr.render(mixed, {}, {"tool": "pytest-dbleak"}, spy)
    assert seen[-1].startswith("<!DOCTYPE html>")
    assert "pytest-dbleak" not in text


def test_password_keys_in_meta_never_reach_the_page() -> None:
    meta = {
        "password": "plain-pw",
        "server": {"host": "h", "password": "srv-pw"},
        "settings": {"allow": 0, "db_passwd": "set-pw"},
        "secret_token": "tok-pw",
    }
    text = hr.render([], {}, meta, identity)
    for secret in ("plain-pw", "srv-pw", "set-pw", "tok-pw"):
        assert secret not in text


# -- header --------------------------------------------------------------------------------
def test_summary_header_totals_and_server(mixed: list[CheckResult]) -> None:
    meta = {
        "tool": "pytest-dbleak",
        "server": {
            "backend": "process",
            "host": "127.0.0.1",
            "port": 33061,
            "version": "11.8.3-MariaDB",
        },
        "settings": {"allow": 0, "report_only": False},
    }
    outcomes = {r.nodeid: "passed" for r in mixed} | {"tests/t.py::test_1": "failed"}
    doc = parse(hr.render(mixed, outcomes, meta, identity))
    stats = {
        e.attrs["data-stat"]: "".join(doc.elements[doc.elements.index(e) + 1].text)
        for e in doc.find("div", "card")
    }
    assert stats == {
        "tests-checked": "10",
        "leaking-tests": "4",
        "failed-by-a-leak": "1",
        "known": "1",
        "reported-only": "1",
        "within-allowance": "1",
        "connections-leaked": "5",
        "peak-server-connections": "4",
    }
    facts = dict(
        zip(
            ("".join(e.text) for e in doc.find("dt")),
            ("".join(e.text) for e in doc.find("dd")),
            strict=False,
        )
    )
    assert facts["server"] == "process · 127.0.0.1:33061 · 11.8.3-MariaDB"
    assert facts["pytest outcomes"] == "1 failed, 9 passed"
    assert facts["settings"] == "allow=0, report_only=False"


def test_header_without_a_server_says_so() -> None:
    doc = parse(hr.render([], {}, {}, identity))
    assert "not started" in "".join(doc.find("em")[0].text)


# -- timeline ------------------------------------------------------------------------------
def test_timeline_draws_both_series_as_steps(mixed: list[CheckResult]) -> None:
    mixed[4] = replace(mixed[4], after=replace(mixed[4].after, checked_out=2))  # frozen
    doc = parse(hr.render(mixed, {}, {}, identity))
    svg = doc.by_id("timeline")
    assert svg.tag == "svg"
    [server] = doc.find("polyline", "series-server")
    [checked] = doc.find("polyline", "series-checked-out")
    top = 4  # the highest count is the top of the axis
    values = [r.after.server_connections for r in mixed]  # 3, 4, 3, 4, ...
    # A step line: the first value, two points (old, new) at each change, the last value.
    expected = [values[0]]
    for old, new in itertools.pairwise(values):
        expected += [old, new]
    expected.append(values[-1])
    assert [y_to_value(y, top) for _, y in points(server)] == expected
    xs = [x for x, _ in points(server)]
    assert xs[0] == hr.LEFT
    assert xs[-1] == hr.LEFT + hr.PLOT_W
    assert [y_to_value(y, top) for _, y in points(checked)] == [0, 0, 2, 2, 0, 0]
    assert [x for x, _ in points(checked)][1:3] == [hr.LEFT + 4 * hr.PLOT_W / 10] * 2


def test_leaking_tests_are_marked_by_status(mixed: list[CheckResult]) -> None:
    doc = parse(hr.render(mixed, {}, {}, identity))
    markers = doc.find("a", "leak-marker")
    assert [(m.attrs["data-index"], m.classes - {"leak-marker"}) for m in markers] == [
        ("2", {"failed"}),
        ("4", {"known"}),
        ("6", {"report-only"}),
        ("8", {"allowed"}),
    ]
    titles = [e for e in doc.find("title") if "test_1" in "".join(e.text)]
    assert "failed the test: 1 connection leaked (1 checked_out) at app/db.py:42" in (
        "".join(titles[0].text)
    )


def test_each_marker_is_one_click_from_its_attribution(mixed: list[CheckResult]) -> None:
    doc = parse(hr.render(mixed, {}, {}, identity))
    section = doc.by_id("leaks")
    assert section.tag == "section"
    details = {d.attrs["id"]: d for d in doc.find("details", "leak")}
    assert len(details) == 4
    for marker in doc.find("a", "leak-marker"):
        target = details[marker.attrs["href"].removeprefix("#")]
        assert target.attrs["data-nodeid"] == marker.attrs["data-nodeid"]
        assert target.attrs["data-status"] in marker.classes


def test_details_hold_the_whole_attribution(mixed: list[CheckResult]) -> None:
    outcomes = {"tests/t.py::test_1": "failed"}
    text = hr.render(mixed, outcomes, {}, identity)
    doc = parse(text)
    body = text[text.index('id="leak-2"') : text.index('id="leak-4"')]
    for expected in (
        "checked_out</span> &times; 1",
        "QueuePool connection",
        "app/db.py:42",
        "get_conn",
        "tests/test_app.py:10",
        "Worker-1",
        "1234",
        "dbleak_main",
        "localhost:5555",
        "Sleep",
        "2025-01-02 03:04:05",
        "pytest outcome: failed",
        "server connections 0 → 4",
    ):
        assert expected in body, expected
    headers = ["".join(th.text) for th in doc.find("th")[:8]]
    assert headers == ["id", "user", "host", "db", "command", "time", "state", "trx_started"]


def test_headline_counts_connections_not_leak_entries() -> None:
    r = CheckResult(
        "t::x",
        [leak(SERVER_CONNECTION, 2), leak(CHECKED_OUT, 1), leak(CHECKED_OUT, 3)],
        runs=100,
        stress="dbleak_http_load",
    )
    assert hr._headline(r) == (
        "6 connections leaked over 100 runs (1 in 17) (4 checked_out, 2 server_connection) "
        "at app/db.py:42"
    )


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (CheckResult("t"), hr.CLEAN),
        (CheckResult("t", [leak()]), hr.FAILED),
        (CheckResult("t", [leak()], known=True), hr.KNOWN),
        (CheckResult("t", [leak()], report_only=True), hr.REPORT_ONLY),
        (CheckResult("t", [leak()], known=True, report_only=True), hr.KNOWN),
        (CheckResult("t", [leak()], allowed=1), hr.ALLOWED),
        (CheckResult("t", [leak(count=2)], allowed=1), hr.FAILED),
    ],
)
def test_status(result: CheckResult, expected: str) -> None:
    assert hr.status(result) == expected


# -- sizes ---------------------------------------------------------------------------------
def test_zero_tests() -> None:
    doc = parse(hr.render([], {}, {}, identity))
    assert doc.by_id("timeline").tag == "svg"
    assert not doc.find("polyline")
    assert not doc.find("a", "leak-marker")
    assert "No test leaked a connection." in "".join(doc.find("p", "none")[0].text)
    assert doc.by_id("leaks").tag == "section"


def test_one_test_spans_the_whole_axis() -> None:
    r = CheckResult("t::only", [leak()], after=Counts(2, 2, 1))
    doc = parse(hr.render([r], {}, {}, identity))
    [server] = doc.find("polyline", "series-server")
    assert points(server) == [
        (hr.LEFT, pytest.approx(hr.TOP + 0.0)),
        (hr.LEFT + hr.PLOT_W, pytest.approx(hr.TOP + 0.0)),
    ]
    [marker] = doc.find("a", "leak-marker")
    assert marker.attrs["href"] == "#leak-1"


def test_twenty_thousand_tests_stay_small_and_keep_spikes() -> None:
    results = [
        CheckResult(f"tests/t.py::test_{i}", after=Counts(3 + i % 3, 0, 0)) for i in range(20_000)
    ]
    # A one-test spike among 16 per column (results are frozen: new ones in their place).
    results[12_345] = replace(results[12_345], after=Counts(40, 0, 0), leaks=(leak(),))
    results[19_999] = replace(results[19_999], leaks=(leak(),))
    text = hr.render(results, {}, {}, identity)
    # The chart and the leaks stay bounded; the hover's names grow with the run, a few
    # bytes over each name (its module is written once).
    data = re.search(r'<script type="application/json" id="tests-data">(.*?)</script>', text)
    assert data is not None
    assert len(text) - len(data.group(0)) < 120_000
    names = sum(len(r.nodeid.partition("::")[2]) for r in results)
    assert len(data.group(0)) < names + 12 * len(results)
    hover = json.loads(data.group(1))
    assert hover["modules"] == ["tests/t.py"]
    assert hover["names"][12_345] == "test_12345"
    assert hover["server"][12_345] == 40
    doc = parse(text)
    [server] = doc.find("polyline", "series-server")
    [checked] = doc.find("polyline", "series-checked-out")
    pts = points(server)
    assert len(pts) <= 5 * hr.PLOT_W
    assert max(y_to_value(y, 40) for _, y in pts) == 40  # the spike survived decimation
    assert len(points(checked)) == 2  # flat: two points, whatever the length of the run
    assert len(doc.find("a", "leak-marker")) == 2
    assert len(doc.find("details", "leak")) == 2


def test_simplify_drops_only_points_inside_straight_runs() -> None:
    assert chart.simplify([(0, 5), (1, 5), (2, 5), (2, 5), (2, 9), (2, 1), (2, 7), (3, 7)]) == [
        (0, 5),
        (2, 5),
        (2, 9),
        (2, 1),
        (2, 7),
        (3, 7),
    ]


@pytest.mark.parametrize(
    ("span", "ticks", "step"),
    [
        (1, 5, 1),
        (5, 5, 1),
        (6, 5, 2),
        (11, 5, 5),
        (40, 8, 5),
        (20_000, 8, 5_000),
    ],
)
def test_nice_step(span: int, ticks: int, step: int) -> None:
    assert chart.nice_step(span, ticks) == step


# -- write ---------------------------------------------------------------------------------
def test_write_is_atomic_and_creates_directories(tmp_path: Path, mixed: list[CheckResult]) -> None:
    path = tmp_path / "out" / "report.html"
    written = hr.write(path, mixed, {}, {}, identity)
    assert written == path
    assert path.read_text(encoding="utf-8") == hr.render(mixed, {}, {}, identity)
    hr.write(os.fspath(path), [], {}, {}, identity)  # overwrite, str path
    assert "no tests were checked" in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_write_failure_keeps_the_old_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixed: list[CheckResult]
) -> None:
    path = tmp_path / "report.html"
    hr.write(path, mixed, {}, {}, identity)
    before = path.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(hr.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        hr.write(path, [], {}, {}, identity)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_module_does_not_import_pytest() -> None:
    source = Path(hr.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+_?pytest\b", source, re.M)


def test_the_header_counts_checked_tests_and_only_leak_failures(mixed: list[CheckResult]) -> None:
    # A skipped test was not checked; a test that failed on its own and leaked did not
    # fail because of the leak.
    over_limit = [r.nodeid for r in mixed if hr.status(r) == hr.FAILED]
    outcomes = {r.nodeid: "passed" for r in mixed} | {mixed[0].nodeid: "skipped"}
    doc = parse(hr.render(mixed, outcomes, {}, identity, leak_failed=over_limit[1:]))
    stats = {
        e.attrs["data-stat"]: "".join(doc.elements[doc.elements.index(e) + 1].text)
        for e in doc.find("div", "card")
    }
    assert stats["tests-checked"] == str(len(mixed) - 1)
    assert stats["failed-by-a-leak"] == str(len(over_limit) - 1)
