"""20,000 tests: what --dbleak costs a big suite, and whether its reports stay usable.

    python bench/big_suite.py [--tests 20000] [--reps 3] [--leak-every 1000]

A generated clean suite (``--tests`` tests in modules of 1,000, each test one ``SELECT 1``
through a session-scoped engine on ``dbleak_mysql_url``) runs with and without
``--dbleak`` (both on the process backend, so only the check differs), interleaved; then a
variant where every ``--leak-every``-th test leaves a connection checked out. Measured:

* per-test overhead: the run loop's time (timed inside the run by a conftest hook, so
  start-up is out) with the check minus without, over the number of tests;
* peak memory growth: the run's peak RSS (``ru_maxrss``) with the check minus without;
* the time to write the JSON and the HTML report for the run's results (the plugin's own
  ``reporting.write_json`` and ``html_report.write``, in this process, on the results the
  run wrote), and their sizes;
* the HTML report's load time in headless Chromium (``--dump-dom`` of the page, whole
  process) against the same Chromium loading an empty page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c

CONFTEST = """\
import json
import os
import resource
import time

import pytest
import sqlalchemy as sa

KEEP = []
_T = {}


@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, pool_size=5, max_overflow=40)
    yield engine
    engine.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    t = time.perf_counter()
    try:
        return (yield)
    finally:
        _T["loop"] = time.perf_counter() - t


def pytest_unconfigure(config):
    _T["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(_T, out)
"""

MODULE = """\
import pytest

from conftest import KEEP

LEAK_EVERY = {leak_every}
FIRST = {first}


@pytest.mark.parametrize("i", range(FIRST, FIRST + {count}))
def test_one_query(engine, i):
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    if LEAK_EVERY and (i + 1) % LEAK_EVERY == 0:
        KEEP.append(engine.connect())
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
)


def write_suite(root: Path, tests: int, leak_every: int) -> None:
    root.mkdir()
    (root / "conftest.py").write_text(CONFTEST)
    for first in range(0, tests, 1000):
        count = min(1000, tests - first)
        (root / f"test_m{first // 1000:03d}.py").write_text(
            MODULE.format(leak_every=leak_every, first=first, count=count)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--leak-every", type=int, default=1000)
    args = ap.parse_args()

    work = c.Workdir("big")
    start_load = c.load()
    write_suite(work.path / "clean", args.tests, 0)
    write_suite(work.path / "leaky", args.tests, args.leak_every)
    env = work.env(PYTHONPATH=str(c.REPO))
    base = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "pytest_dbleak.plugin",
        "--dbleak-backend=process",
        "-p",
        "no:cacheprovider",
    ]
    modes = {
        "clean, without --dbleak": ("clean", []),
        "clean, --dbleak": ("clean", ["--dbleak", "--dbleak-report=r.json"]),
        "leaky, without --dbleak": ("leaky", []),
        "leaky, --dbleak": (
            "leaky",
            ["--dbleak", "--dbleak-settle-timeout=0.2", "--dbleak-report=r.json"],
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(args.reps):
        c.sample_load()
        for name, (suite, extra) in modes.items():
            out = work.path / "out.json"
            t = time.perf_counter()
            done = subprocess.run(
                [*base, *extra],
                cwd=work.path / suite,
                env={**env, "BENCH_OUT": str(out)},
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            expected = (0, 6) if "leak" in name and "--dbleak" in extra else (0,)
            if done.returncode not in expected:
                tail = "\n".join(done.stdout.splitlines()[-15:])
                raise SystemExit(f"{name}: exit {done.returncode}\n{tail}\n{done.stderr[-2000:]}")
            data = json.loads(out.read_text())
            data["wall"] = wall
            runs[name].append(data)

    n = args.tests
    rows = []
    for pair in (
        ("clean, without --dbleak", "clean, --dbleak"),
        ("leaky, without --dbleak", "leaky, --dbleak"),
    ):
        off, on = (runs[p] for p in pair)
        loop_off = c.median(r["loop"] for r in off)
        loop_on = c.median(r["loop"] for r in on)
        rss_off = c.median(r["maxrss_kb"] for r in off) / 1024
        rss_on = c.median(r["maxrss_kb"] for r in on) / 1024
        rows.append(
            (
                pair[1].split(",")[0],
                f"{c.s(c.median(r['wall'] for r in off))} / {c.s(c.median(r['wall'] for r in on))}",
                f"{c.s(loop_off)} / {c.s(loop_on)}",
                c.ms((loop_on - loop_off) / n, 3),
                f"{rss_off:.0f} / {rss_on:.0f}",
                f"+{rss_on - rss_off:.1f}",
            )
        )
    print(f"## {n:,} tests, medians of {args.reps} runs per mode, interleaved\n")
    print(c.machine_table())
    print()
    print(
        c.table(
            (
                "suite",
                "whole run s (off / on)",
                "run loop s (off / on)",
                "overhead ms per test",
                "peak RSS MB (off / on)",
                "extra MB",
            ),
            rows,
        )
    )
    print()
    print(reports(work, args.reps))
    print()
    print(c.busy_note(start_load))
    print(work.report_cleanup())


def reports(work: Path | Any, reps: int) -> str:
    """Write the leaky run's results as JSON and HTML; time it; load the page in Chromium."""
    sys.path.insert(0, str(c.REPO))
    from pytest_dbleak.engine.results import CheckResult
    from pytest_dbleak.reports import html as html_report
    from pytest_dbleak.reports import reporting

    rows = []
    pages = {}
    for suite in ("clean", "leaky"):
        document = json.loads((work.path / suite / "r.json").read_text())
        outcomes = {t["nodeid"]: t["outcome"] for t in document["tests"]}
        results = []
        for entry in document["tests"]:
            data = {k: v for k, v in entry.items() if k not in ("outcome", "leak_failed")}
            results.append(CheckResult.from_dict(data))
        meta = {k: document[k] for k in ("tool", "run", "server", "settings") if k in document}
        json_times, html_times = [], []
        for _ in range(reps):
            t = time.perf_counter()
            reporting.write_json(work.path / f"{suite}.json", results, outcomes, meta, str)
            json_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            html_report.write(work.path / f"{suite}.html", results, outcomes, meta, str)
            html_times.append(time.perf_counter() - t)
        pages[suite] = work.path / f"{suite}.html"
        rows.append(
            (
                f"{suite} ({sum(1 for r in results if r.leaks)} leaking)",
                c.ms(c.median(json_times), 0),
                f"{(work.path / f'{suite}.json').stat().st_size / 1e6:.1f}",
                c.ms(c.median(html_times), 0),
                f"{pages[suite].stat().st_size / 1e6:.2f}",
            )
        )
    text = c.table(("results", "write JSON ms", "JSON MB", "write HTML ms", "HTML MB"), rows)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return text + "\n\nChromium not found (Debian: apt-get install chromium): no load time."
    blank = work.path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    loads: dict[str, list[float]] = {"empty page": [], **{f"{s} report": [] for s in pages}}
    for i in range(reps):
        for name, page in (("empty page", blank), *((f"{s} report", p) for s, p in pages.items())):
            profile = work.path / f"profile-{i}-{name.split()[0]}"
            t = time.perf_counter()
            done = subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "--dump-dom",
                    page.as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=180,
            )
            loads[name].append(time.perf_counter() - t)
            if 'data-js="ready"' not in done.stdout and name != "empty page":
                raise SystemExit(f"{name}: the page's script did not run in Chromium")
            shutil.rmtree(profile, ignore_errors=True)
    floor = c.median(loads["empty page"])
    load_rows = [
        (name, c.s(c.median(v)), f"+{c.s(c.median(v) - floor)}" if name != "empty page" else "")
        for name, v in loads.items()
    ]
    return (
        text
        + "\n\nHeadless Chromium, whole process, `--dump-dom` (page loaded and its script run):\n\n"
        + c.table(("page", "median s", "over the empty page s"), load_rows)
    )


if __name__ == "__main__":
    main()
