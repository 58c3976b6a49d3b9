"""The local loop: a one-test session against the floor, cold and with ``--dbleak-reuse``.

    python bench/cold_start.py [--runs 9]

Side by side in one run, interleaved, medians of N whole ``python -m pytest`` processes:

* **floor**: the same pytest + SQLAlchemy + PyMySQL process running one test that does
  ``SELECT 1`` through a SQLAlchemy engine - on SQLite, in memory: this machine has no
  other MySQL server a benchmark may use, so the floor is the process without a server.
  It imports what the checked test imports (PyMySQL, SQLAlchemy's MySQL dialect), so
  that the difference is the plugin's and the server's, not the test's own imports;
* **cold**: ``pytest --dbleak`` (process backend, warm template cache): copy the
  template, start mariadbd, log in, create the session's database, run, stop;
* **reused**: ``pytest --dbleak --dbleak-reuse`` while a reused server is up (one
  session before the rounds starts it): create the session's database, run, drop it.

Then, in-process, where a cold session's server time goes: template copy, spawning the
server, first login (and securing it), provisioning the session's database, stopping.

The plugin's modules are byte-compiled first, as a regular install leaves them.
Plugin autoloading is off in every run (the plugin is given with ``-p``), so other
installed plugins do not count. The reused server lives in a private cache folder and is
stopped at the end.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as c

DBLEAK_TEST = """\
import sqlalchemy as sa


def test_select_1(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""

FLOOR_TEST = """\
import pymysql  # noqa: F401 - the floor imports what the checked session imports
import sqlalchemy as sa
import sqlalchemy.dialects.mysql.pymysql  # noqa: F401 - the dialect the checked test loads


def test_select_1():
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()

    # What a regular `pip install` leaves: the plugin's bytecode. Without it (an editable
    # install under PYTHONDONTWRITEBYTECODE, as on CI machines) every run compiles its ~50
    # modules again (~45 ms) while the floor's libraries load theirs precompiled.
    compileall.compile_dir(c.REPO / "pytest_dbleak", quiet=1)
    work = c.Workdir("cold")
    start_load = c.load()
    cache = work.path / "cache"
    shared = Path(
        os.environ.get("DBLEAK_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-dbleak"
    )
    cache.mkdir()
    for template in shared.glob("template-*"):
        if (template / "READY").exists():
            shutil.copytree(template, cache / template.name)
    (work.path / "test_dbleak.py").write_text(DBLEAK_TEST)
    (work.path / "test_floor.py").write_text(FLOOR_TEST)
    env = work.env(DBLEAK_CACHE_DIR=str(cache), PYTHONPATH=str(c.REPO))
    base = [sys.executable, "-m", "pytest", "-q", "-p", "pytest_dbleak.plugin"]
    runs = {
        "floor (SQLite, no server)": [*base, "test_floor.py"],
        "cold `--dbleak`": [*base, "--dbleak", "--dbleak-backend=process", "test_dbleak.py"],
        "reused `--dbleak --dbleak-reuse`": [
            *base,
            "--dbleak",
            "--dbleak-backend=process",
            "--dbleak-reuse",
            "test_dbleak.py",
        ],
    }

    def once(cmd: list[str]) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=work.path, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        cpu[cmd[-1] + " ".join(cmd)].append(
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        )
        return elapsed

    cpu: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for cmd in runs.values():  # warm: bytecode, the template, the reused server
            once(cmd)
        cpu.clear()
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for _ in range(args.runs):
            c.sample_load()
            random.shuffle(order)  # no alternative always runs right after another
            for name in order:
                times[name].append(once(runs[name]))
    finally:
        subprocess.run(
            [sys.executable, "-m", "pytest_dbleak", "stop", f"--cache-dir={cache}"],
            env=env,
            capture_output=True,
            check=False,
        )
    floor = c.median(times["floor (SQLite, no server)"])
    floor_cpu = c.median(
        cpu[runs["floor (SQLite, no server)"][-1] + " ".join(runs["floor (SQLite, no server)"])]
    )
    rows = []
    floor_times = times["floor (SQLite, no server)"]
    for name, values in times.items():
        m = c.median(values)
        cmd = runs[name]
        spent = c.median(cpu[cmd[-1] + " ".join(cmd)])
        # Each round's own difference: the machine's speed drifts between rounds (a VM's
        # steal time), and the three runs of one round share the drift.
        paired = c.median([v - f for v, f in zip(values, floor_times, strict=True)])
        rows.append(
            (
                name,
                c.s(m),
                f"{c.s(min(values))}-{c.s(max(values))}",
                signed(m - floor) if name != "floor (SQLite, no server)" else "",
                signed(paired) if name != "floor (SQLite, no server)" else "",
                f"{m / floor:.2f}x",
                f"{c.s(spent)} ({signed(spent - floor_cpu)})",
            )
        )
    print(f"## One-test session, whole process, medians of {args.runs}\n")
    print(c.machine_table())
    print()
    print(
        c.table(
            (
                "session",
                "median s",
                "range s",
                "over the floor s",
                "over the floor, same round s (median)",
                "ratio",
                "CPU s (over floor)",
            ),
            rows,
        )
    )
    print(
        "\nCPU: user + system time of the pytest process and the processes it waited for "
        "(a cold session's server included; a reused server is not the session's child, "
        "so its share is not counted). Less sensitive than wall time to a busy machine."
    )
    print()
    print(phases(cache, args.runs))
    print()
    print(c.busy_note(start_load))
    print(work.report_cleanup())


def signed(seconds: float) -> str:
    """+0.05 / -0.02: a difference to the floor (noise can make it negative)."""
    return ("+" if seconds >= 0 else "-") + c.s(abs(seconds))


def phases(cache: Path, runs: int) -> str:
    """Where a cold session's server time goes, measured in this process."""
    sys.path.insert(0, str(c.REPO))
    from pytest_dbleak.families.mysql import embedded
    from pytest_dbleak.families.mysql.monitor import Monitor

    binary = embedded.find_mysqld(None)
    template = embedded.ensure_template(binary, cache)
    steps: dict[str, list[float]] = {
        k: []
        for k in (
            "template copy (alone, for scale)",
            "launch (pytest's thread)",
            "copy + start + first login + secure",
            "provision",
            "stop",
        )
    }
    for _ in range(runs):
        t = time.perf_counter()
        shutil.rmtree(embedded.server_root(template), ignore_errors=True)
        steps["template copy (alone, for scale)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        launched = embedded.launch_process(binary, cache, 30)
        steps["launch (pytest's thread)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        server = launched.wait()
        steps["copy + start + first login + secure"].append(time.perf_counter() - t)
        t = time.perf_counter()
        monitor = Monitor(server.endpoint, server.where)
        monitor.claim("dbleak_bench_abcdef")
        monitor.create_database("dbleak_bench_abcdef", "dbleak_bench_abcdef", "pw", "%")
        steps["provision"].append(time.perf_counter() - t)
        t = time.perf_counter()
        monitor.close()
        server.stop()
        steps["stop"].append(time.perf_counter() - t)
    rows = [(k, c.ms(c.median(v))) for k, v in steps.items()]
    note = (
        "In a session the launch returns at once: the server's reaper copies the template "
        "(sparse) and starts the server on another core while pytest imports SQLAlchemy "
        "and the plugin's checks; the session waits only for what is left of it."
    )
    return (
        f"### A cold session's server, in-process, medians of {runs}\n\n"
        + c.table(("step", "ms"), rows)
        + f"\n\n{note}"
    )


if __name__ == "__main__":
    main()
