"""The HTML report in real headless Chromium: the chart renders with no network, leaking
tests are listed, a marker's target opens, and a screenshot shows the chart's colours.

Skips, naming Chromium, only when no chromium binary is on PATH (Debian: apt-get install
chromium). Each Chromium run gets its own throw-away profile and every network feature
that could reach out is turned off; the page's own CSP forbids fetches anyway.
"""

from __future__ import annotations

import html
import itertools
import logging
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_dbleak.engine.errors import Redactor
from pytest_dbleak.engine.results import (
    CHECKED_OUT,
    OPEN_TRANSACTION,
    SERVER_CONNECTION,
    CheckResult,
    Counts,
    Leak,
    Site,
)
from pytest_dbleak.reports import html as html_report

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often have a tiny /dev/shm; Debian's launcher check for it is unreliable.
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-default-browser-check",
)
PASSWORD = "hunter2-not-for-eyes"
SERVER_BLUE = (0x25, 0x63, 0xEB)  # --server in the report's CSS
CHECKED_GREEN = (0x05, 0x96, 0x69)  # --checked


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium not found: no 'chromium' or 'chromium-browser' on PATH "
        "(Debian: apt-get install chromium)"
    )


class Browser:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.runs = 0

    def run(self, url: str, *args: str) -> str:
        """One headless Chromium run with a fresh profile; its stdout."""
        self.runs += 1
        profile = self.root / f"profile-{self.runs}"
        cmd = [self.binary, *FLAGS, f"--user-data-dir={profile}", *args, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, (
            f"chromium exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )
        return proc.stdout

    def dump_dom(self, url: str) -> str:
        dom = self.run(url, "--dump-dom")
        assert "</html>" in dom, f"no DOM dumped for {url}"
        return dom


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Browser:
    return Browser(chromium, tmp_path)


def leak(kind: str, count: int, line: int, what: str) -> Leak:
    site = Site("app/db.py", line, "get_connection")
    return Leak(
        kind,
        count,
        what,
        site,
        [Site("tests/test_app.py", line + 100, "test_it"), site],
        "MainThread",
        [900 + line],
        [
            {
                "id": 900 + line,
                "user": "dbleak_main_1a2b3c",
                "host": "localhost:40122",
                "db": "dbleak_main_1a2b3c",
                "command": "Sleep",
                "time": 2,
                "state": "",
                "trx_started": "2025-11-25 13:00:00" if kind == OPEN_TRANSACTION else None,
            }
        ],
    )


def sample_run(n: int = 40) -> list[CheckResult]:
    """A run where a few tests leak: failed, known (baseline) and reported-only."""
    results = []
    server = checked = 2
    for i in range(n):
        before = Counts(server, server + 4, checked)
        extra: dict[str, Any] = {}  # results are frozen: each is made whole at once
        if i == 7:
            extra["leaks"] = (leak(CHECKED_OUT, 1, 42, "QueuePool connection never returned"),)
            server, checked = server + 1, checked + 1
        elif i == 19:
            extra["leaks"] = (
                leak(
                    SERVER_CONNECTION,
                    2,
                    88,
                    f"2 connections of mysql://app:{PASSWORD}@db left open",
                ),
            )
            extra["report_only"] = True
            server += 2
        elif i == 26:
            extra["leaks"] = (leak(OPEN_TRANSACTION, 1, 61, "transaction open since BEGIN"),)
            extra["known"] = True
        elif i == 33:
            extra["leaks"] = (leak(CHECKED_OUT, 2, 42, "QueuePool connection never returned"),)
            server, checked = server + 2, checked + 2
        result = CheckResult(
            f"tests/test_app.py::test_case_{i:02d}",
            before=before,
            after=Counts(server, server + 4, checked),
            **extra,
        )
        results.append(result)
    return results


META = {
    "tool": "pytest-dbleak",
    "server": {
        "backend": "process",
        "host": "127.0.0.1",
        "port": 40122,
        "version": "11.8.3-MariaDB",
    },
    "settings": {"allow": 0, "settle_timeout": 1.0, "report_only": False},
    # 2026-12-05 11:30:03 UTC, 83.4 s
    "run": {"started": 1796470203.0, "duration": 83.4},
}


def write_report(path: Path, results: list[CheckResult]) -> Path:
    outcomes = {r.nodeid: "failed" if r.failed else "passed" for r in results}
    return html_report.write(path, results, outcomes, META, Redactor([PASSWORD]))


def elements(dom: str, tag: str, cls: str) -> list[str]:
    """Start tags of `tag` whose class list holds `cls`, as Chromium serialised them."""
    found = []
    for match in re.finditer(rf"<{tag}\b[^>]*>", dom):
        classes = re.search(r'\sclass="([^"]*)"', match.group(0))
        if classes and cls in classes.group(1).split():
            found.append(match.group(0))
    return found


def attr(tag: str, name: str) -> str:
    match = re.search(rf'\s{name}="([^"]*)"', tag)
    assert match, f"{name} not in {tag}"
    return match.group(1)


def test_chart_and_leaks_render_in_chromium(browser: Browser, tmp_path: Path) -> None:
    results = sample_run()
    report = write_report(tmp_path / "report.html", results)
    dom = browser.dump_dom(report.as_uri())

    assert re.search(r'<html[^>]*\sdata-js="ready"', dom), "the inline script did not run"
    assert '<svg id="timeline"' in dom
    for series, field in (
        ("series-server", "server_connections"),
        ("series-checked-out", "checked_out"),
    ):
        [polyline] = elements(dom, "polyline", series)
        values = [getattr(r.after, field) for r in results]
        changes = sum(1 for a, b in itertools.pairwise(values) if a != b)
        assert len(attr(polyline, "points").split()) == 2 + 2 * changes  # a step per change
    markers = elements(dom, "a", "leak-marker")
    assert [attr(m, "data-nodeid") for m in markers] == [
        "tests/test_app.py::test_case_07",
        "tests/test_app.py::test_case_19",
        "tests/test_app.py::test_case_26",
        "tests/test_app.py::test_case_33",
    ]
    assert [set(attr(m, "class").split()) - {"leak-marker"} for m in markers] == [
        {"failed"},
        {"report-only"},
        {"known"},
        {"failed"},
    ]
    assert '<section id="leaks">' in dom
    details = elements(dom, "details", "leak")
    assert len(details) == 4
    failing = [d for d in details if "failed" in attr(d, "class").split()]
    assert [attr(d, "data-nodeid") for d in failing] == [
        "tests/test_app.py::test_case_07",
        "tests/test_app.py::test_case_33",
    ]
    assert "app/db.py:42" in dom
    assert PASSWORD not in dom


def test_a_marker_target_opens_its_details(browser: Browser, tmp_path: Path) -> None:
    results = sample_run()
    report = write_report(tmp_path / "report.html", results)
    [marker] = [
        m
        for m in elements(browser.dump_dom(report.as_uri()), "a", "leak-marker")
        if "test_case_33" in m
    ]
    dom = browser.dump_dom(report.as_uri() + attr(marker, "href"))
    opened = [d for d in elements(dom, "details", "leak") if re.search(r"\sopen(=|\s|>)", d)]
    assert [attr(d, "data-nodeid") for d in opened] == ["tests/test_app.py::test_case_33"]


@pytest.mark.parametrize("n", [0, 1, 20_000])
def test_sizes_render(browser: Browser, tmp_path: Path, n: int) -> None:
    leaky = (leak(CHECKED_OUT, 1, 42, "never returned"),)
    results = [
        CheckResult(
            f"tests/t.py::test_{i}",
            after=Counts(3 + i % 4, 0, i % 2),
            leaks=leaky if i % 997 == 0 else (),  # a few leaking tests spread over the run
        )
        for i in range(n)
    ]
    report = write_report(tmp_path / "report.html", results)
    dom = browser.dump_dom(report.as_uri())
    assert '<svg id="timeline"' in dom
    assert len(elements(dom, "polyline", "series-server")) == (1 if n else 0)
    assert len(elements(dom, "a", "leak-marker")) == len(range(0, n, 997))
    if not n:
        assert "no tests were checked" in dom


def test_screenshot_shows_the_chart(browser: Browser, tmp_path: Path) -> None:
    report = write_report(tmp_path / "report.html", sample_run())
    shot = tmp_path / "report.png"
    browser.run(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,900")
    log.info("screenshot of the HTML report: %s", shot)
    assert shot.is_file()
    assert shot.stat().st_size > 20_000
    width, height, colours = read_png(shot.read_bytes())
    assert (width, height) == (1280, 900)
    # The chart was painted, not just the page: the series' colours cover far more than
    # the legend's swatches (about 66 pixels each; the lines give about 800 and 1300).
    # Red is no evidence: the FAILED badges and a card border are red too.
    assert count_near(colours, SERVER_BLUE) > 300
    assert count_near(colours, CHECKED_GREEN) > 300


def test_the_header_shows_when_the_run_happened_and_how_long_it_took(
    browser: Browser, tmp_path: Path
) -> None:
    report = write_report(tmp_path / "report.html", sample_run())
    dom = browser.dump_dom(report.as_uri())
    [run] = re.findall(r'<time id="run" datetime="([^"]*)">([^<]*)</time>', dom)
    assert run == ("2026-12-05T11:30:03+00:00", "2026-12-05 11:30:03 UTC, 83.4 s")


def hover(browser: Browser, report: Path, fraction: float) -> str:
    """The tooltip's text after a real mousemove at `fraction` of the plot's width.

    A copy of the report gets one more inline script (its CSP allows them) that moves
    the pointer over the chart through the page's own handler and writes what shows.
    """
    probe = f"""<script>
    var svg = document.getElementById("timeline");
    var box = svg.getBoundingClientRect();
    var scale = box.width / svg.viewBox.baseVal.width;
    var left = +svg.getAttribute("data-left"), plot = +svg.getAttribute("data-plot-width");
    svg.dispatchEvent(new MouseEvent("mousemove", {{bubbles: true,
      clientX: box.left + (left + {fraction} * plot) * scale, clientY: box.top + 100}}));
    var tip = document.getElementById("hover");
    document.documentElement.setAttribute("data-hover", tip.hidden ? "" : tip.textContent);
    </script></body>"""
    copy = report.with_name("hover.html")
    copy.write_text(report.read_text().replace("</body>", probe))
    dom = browser.dump_dom(copy.as_uri())
    match = re.search(r'<html[^>]*\sdata-hover="([^"]*)"', dom)
    assert match, "the probe did not run"
    return html.unescape(match.group(1))


@pytest.mark.parametrize("n", [40, 20_000])
def test_hovering_the_timeline_names_the_test_under_the_pointer(
    browser: Browser, tmp_path: Path, n: int
) -> None:
    results = (
        sample_run()
        if n == 40
        else [
            CheckResult(f"tests/t.py::test_{i}", after=Counts(3 + i % 4, 0, i % 2))
            for i in range(n)
        ]
    )
    report = write_report(tmp_path / "report.html", results)
    aimed = n * 3 // 4 + 1  # 1-based: the middle of its slot
    text = hover(browser, report, (aimed - 0.5) / n)
    match = re.fullmatch(r"#(\d+) (\S+) \u2014 (\d+) server, (\d+) checked out", text)
    assert match, text
    index = int(match.group(1))
    # A pixel of the chart spans several tests at 20,000 (the page is 1280 px wide at
    # most): the pointer names the test under it at that resolution.
    assert abs(index - aimed) <= n // 1000
    r = results[index - 1]
    assert match.groups()[1:] == (
        r.nodeid,
        str(r.after.server_connections),
        str(r.after.checked_out),
    )
    assert hover(browser, report, 1.5) == ""  # right of the plot: nothing shown


# -- a tiny PNG reader: enough for Chromium's 8-bit RGB(A) screenshots ----------------------
def read_png(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Width, height and how many pixels have each RGB colour."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), "only 8-bit, non-interlaced PNGs"
    assert color in (2, 6), f"PNG colour type {color}: only RGB and RGBA"
    bpp = 4 if color == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    colours: Counter[tuple[int, int, int]] = Counter()
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        colours.update(zip(line[0::bpp], line[1::bpp], line[2::bpp], strict=True))
        prev = line
    return width, height, colours


def count_near(colours: Counter[tuple[int, int, int]], rgb: tuple[int, int, int]) -> int:
    """Pixels within a small distance of rgb: anti-aliasing blends edges."""
    return sum(
        n for c, n in colours.items() if all(abs(a - b) <= 24 for a, b in zip(c, rgb, strict=True))
    )
