"""How long a test waits for its leak verdict, and proof that a clean test waits for nothing.

    python bench/verdict_latency.py [--reps 3] [--budget 900]

One test file, cases interleaved: clean tests (one query on a session engine) in blocks
of two checked and two identical ones marked ``no_dbleak`` (unchecked, same run), tests
that leak a checked-out pooled connection, tests that leave a raw PyMySQL connection
open (a server-side leak), and tests whose connection is returned by a background
thread 0.1 s after the test ends (a suspect that settles). Three modes, interleaved:
``--dbleak`` with the default settle timeout, ``--dbleak --dbleak-settle-timeout=0.2``,
and without ``--dbleak``.

Per test: ``waited`` from the JSON report (``--dbleak-report``), and, from a conftest
hook, the time from the end of the test's teardown to the logging of its last report
to the first report logged after it (the plugin logs a test's reports only once its
verdict is known; without ``--dbleak`` that is the teardown report itself), plus the
whole protocol time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import _common as c

CONFTEST = """\
import json
import os
import time

import pytest
import sqlalchemy as sa

_T = {}


@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    eng = sa.create_engine(dbleak_mysql_url)
    yield eng
    eng.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t = time.perf_counter()
    try:
        return (yield)
    finally:
        _T.setdefault(item.nodeid, {})["protocol"] = time.perf_counter() - t


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        _T.setdefault(item.nodeid, {})["teardown_end"] = time.perf_counter()


def pytest_runtest_logreport(report):
    _T.setdefault(report.nodeid, {}).setdefault("logged", []).append(time.perf_counter())


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMINGS"], "w") as f:
        json.dump(_T, f)
"""

TESTS = """\
import threading

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

CASES = {cases!r}
KEEP = []  # leaked objects stay referenced: the leak persists for the whole settle time


def _query(conn):
    assert conn.execute(sa.text("SELECT 1")).scalar() == 1


PARAMS = [
    pytest.param(case, marks=pytest.mark.no_dbleak) if case.startswith("unchecked") else case
    for case in CASES
]


@pytest.mark.parametrize("case", PARAMS)
def test_case(case, engine, dbleak_mysql_url):
    kind = case.split("-")[0]
    if kind in ("clean", "unchecked"):
        with engine.connect() as conn:
            _query(conn)
    elif kind == "checked_out":
        conn = engine.connect()
        _query(conn)
        KEEP.append(conn)
    elif kind == "server_connection":
        url = make_url(dbleak_mysql_url)
        KEEP.append(pymysql.connect(
            host=url.host, port=url.port, user=url.username, password=url.password,
            database=url.database, ssl_disabled=True,
        ))
    elif kind == "settles":
        conn = engine.connect()
        _query(conn)
        threading.Timer(0.1, conn.close).start()
    elif kind == "finished_thread":
        worker = threading.Thread(target=lambda: KEEP.append(engine.connect()))
        worker.start()
        worker.join()
    elif kind == "live_thread":
        # Holds its connection past the settle time, then lets go of it and ends.
        def hold():
            conn = engine.connect()
            holding.set()
            done.wait(3)
            conn.close()
        holding, done = threading.Event(), threading.Event()
        threading.Thread(target=hold, daemon=True).start()
        holding.wait(10)  # the test ends while the thread holds the connection
        KEEP.append(done)
"""

KINDS = {
    "clean": "clean (one query, connection returned)",
    "unchecked": "the same clean test marked no_dbleak (no check)",
    "checked_out": "leak: pooled connection left checked out",
    "server_connection": "leak: raw PyMySQL connection left open",
    "settles": "suspect: connection returned by a thread 0.1 s after the test",
    "finished_thread": "leak: checked out by a thread of the test that has finished",
    "live_thread": "leak: held by a background thread still running",
}


def cases(clean: int) -> list[str]:
    leaky = [
        "checked_out-0",
        "server_connection-0",
        "settles-0",
        "finished_thread-0",
        "live_thread-0",
        "checked_out-1",
        "server_connection-1",
        "settles-1",
        "finished_thread-1",
        "live_thread-1",
        "checked_out-2",
    ]
    out, k = [], 0
    for i in range(clean):
        # Blocks of two checked, two unchecked: the second of each pair is compared (a
        # checked test after a no_dbleak one takes a fresh baseline snapshot; after a
        # checked one it reuses that test's final snapshot, as in a normal run).
        out += [f"clean-{i:02d}a", f"clean-{i:02d}b", f"unchecked-{i:02d}a", f"unchecked-{i:02d}b"]
        if i % 2 == 1 and k < len(leaky):  # a suspect after every second block
            out.append(leaky[k])
            k += 1
    return out + leaky[k:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="runs of each mode (default 3)")
    ap.add_argument(
        "--clean",
        type=int,
        default=12,
        help="blocks of 2 clean + 2 no_dbleak tests per run (default 12)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="per pytest run (s)")
    ap.add_argument("--budget", type=float, default=900, help="overall time budget (s)")
    args = ap.parse_args()

    start_load = c.load()
    deadline = c.Deadline(args.budget)
    work = c.Workdir("verdict")
    project = work.path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_verdicts.py").write_text(TESTS.format(cases=cases(args.clean)))
    timings, report = work.path / "timings.json", work.path / "report.json"
    env = work.env(BENCH_TIMINGS=str(timings))
    base = [
        *c.PYTEST,
        "-q",
        "-p",
        "pytest_dbleak.plugin",
        "--dbleak-backend=process",
        f"--dbleak-cache-dir={work.path / 'cache'}",
        "test_verdicts.py",
    ]
    on = [*base[:3], "--dbleak", f"--dbleak-report={report}", *base[3:]]
    known = work.path / "baseline.json"  # recorded by the warm-up run of its mode
    modes = {
        "--dbleak (default settle)": on,
        "--dbleak --dbleak-settle-timeout=0.2": [*on[:3], "--dbleak-settle-timeout=0.2", *on[3:]],
        "--dbleak, every leak known in a baseline": [
            *on[:3],
            f"--dbleak-baseline={known}",
            *on[3:],
        ],
        "without --dbleak": base,
    }

    print("# Verdict latency\n")
    print(c.machine_table([("work dir", str(work.path))]))
    print()

    # (mode, kind) -> lists of values
    latency: dict[tuple[str, str], list[float]] = defaultdict(list)
    protocol: dict[tuple[str, str], list[float]] = defaultdict(list)
    waited: dict[tuple[str, str], list[float]] = defaultdict(list)
    verdicts: dict[tuple[str, str], list[int]] = defaultdict(list)
    twins: dict[str, list[float]] = defaultdict(list)  # per run: median(clean - its twin)

    def one(mode: str, record: bool) -> None:
        timings.unlink(missing_ok=True)
        report.unlink(missing_ok=True)
        c.run(modes[mode], cwd=project, env=env, timeout=args.timeout, ok_codes=(0, 1, 6))
        times = json.loads(timings.read_text())
        results = {}
        if report.exists():
            results = {t["nodeid"]: t for t in json.loads(report.read_text())["tests"]}
        if not record:
            return
        pairs = []
        for nodeid, t in times.items():
            if "[clean-" in nodeid and nodeid.endswith("b]"):
                twin = times.get(nodeid.replace("[clean-", "[unchecked-"))
                if twin:
                    pairs.append(t["protocol"] - twin["protocol"])
        if pairs:
            twins[mode].append(c.median(pairs))
        for nodeid, t in times.items():
            kind = nodeid.split("[", 1)[1].split("-")[0]
            key = (mode, kind)
            after = [x for x in t.get("logged", []) if x >= t.get("teardown_end", float("inf"))]
            if after:
                latency[key].append(min(after) - t["teardown_end"])
            protocol[key].append(t["protocol"])
            if nodeid in results:
                waited[key].append(results[nodeid]["waited"])
                verdicts[key].append(results[nodeid]["leaked"])

    for mode in modes:  # warm-up (template, bytecode)
        one(mode, record=False)
    for i in range(args.reps):
        order = list(modes)[i % len(modes) :] + list(modes)[: i % len(modes)]
        for mode in order:
            one(mode, record=True)
        print(f"rep {i + 1}/{args.reps} done", file=sys.stderr)
        c.sample_load()
        if deadline.expired():
            break

    print("## Time from the end of a test to its verdict (medians over all runs)\n")
    rows = []
    for mode in modes:
        for kind, label in KINDS.items():
            key = (mode, kind)
            if not protocol[key]:
                continue
            w = waited.get(key)
            leaked = verdicts.get(key)
            rows.append(
                (
                    mode,
                    label,
                    f"{sum(1 for x in leaked if x)}/{len(leaked)} leaked" if leaked else "no check",
                    c.s(c.median(w), 3) if w else "-",
                    c.ms(c.median(latency[key]), 1),
                    c.ms(c.median(protocol[key]), 1),
                    len(protocol[key]),
                )
            )
    print(
        c.table(
            (
                "mode",
                "test",
                "verdict",
                "`waited` in JSON (s)",
                "teardown end -> verdict logged (ms)",
                "whole test (ms)",
                "tests",
            ),
            rows,
        )
    )
    print()

    print("## A clean test waits for nothing\n")
    clean_rows = []
    for mode in list(modes)[:2]:
        key = (mode, "clean")
        w = waited[key]
        clean_rows.append(
            (
                mode,
                f"{sum(1 for x in w if x == 0)}/{len(w)}",
                f"{max(w):.3f}" if w else "-",
                c.ms(c.median(latency[key]), 2),
                c.ms(c.median(twins[mode]), 2),
            )
        )
    clean_rows.append(
        (
            "without --dbleak (no check at all)",
            "-",
            "-",
            c.ms(c.median(latency[("without --dbleak", "clean")]), 2),
            c.ms(c.median(twins["without --dbleak"]), 2),
        )
    )
    print(
        c.table(
            (
                "mode",
                "clean tests with waited == 0",
                "max waited (s)",
                "teardown end -> verdict (ms)",
                "clean test minus its no_dbleak twin, same run (ms, median of pairs)",
            ),
            clean_rows,
        )
    )
    print()
    print(
        "The last column is what the check adds to a clean test whatever the settle "
        "timeout (without --dbleak it shows the noise floor of the pairing); compare with "
        "bench/per_test_overhead.py.\n"
    )
    print(c.busy_note(start_load))
    print(deadline.note())
    work.close()
    print(work.report_cleanup())
    return 0


if __name__ == "__main__":
    sys.exit(main())
