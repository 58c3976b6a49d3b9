"""One-test session: pytest-dbleak's process backend vs pytest-mysql, as whole processes.

    python bench/server_start.py [--runs 7] [--template-runs 3] [--budget 900]

Measures, on this machine:

* the wall time of a whole ``python -m pytest`` process running one test that does one
  ``SELECT 1``: through ``dbleak_mysql_url`` (``--dbleak --dbleak-backend=process``, warm
  template cache) and through pytest-mysql's ``mysql_proc``/``mysql`` fixtures (MariaDB
  via its ini options), plus a no-database baseline; N runs each, interleaved; medians;
* the server's share for our plugin: ``pytest_dbleak.families.mysql.embedded.start_process`` called
  in-process N times (copy the template, start mariadbd, wait for a real login), and the
  same with two candidate fixes applied by monkeypatching (labelled "what-if");
* the template's one-time cost: sessions with an empty ``--dbleak-cache-dir`` (one per
  round, interleaved with the others), and ``ensure_template`` in-process.

pytest plugin autoloading is off in every run (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, the
plugin under test given with ``-p``) so that whatever else is installed on the machine
does not count; one extra row shows our session with every installed plugin autoloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import _common as c

OURS_TEST = """\
import sqlalchemy as sa


def test_select_1(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""

# The same test as ours: one SELECT 1 through a SQLAlchemy engine, over the fixture's
# connection (StaticPool, not disposed: the fixture closes its connection itself).
THEIRS_TEST = """\
import sqlalchemy as sa


def test_select_1(mysql):
    engine = sa.create_engine(
        "mysql+pymysql://", creator=lambda: mysql, poolclass=sa.pool.StaticPool
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
"""

BASELINE_TEST = """\
def test_nothing():
    assert 1 + 1 == 2
"""

IMPORTS_TEST = """\
import pymysql
import sqlalchemy as sa


def test_nothing():
    assert sa.text("SELECT 1") is not None and pymysql.connect
"""

# What-if (bench only, applied by monkeypatching; the plugin files are not changed):
# the readiness login without building an SSL context, and a 1 MiB ibtmp1 instead of
# the 12 MiB that mariadbd physically writes at every start. Loaded with -p.
WHATIF_PLUGIN = """\
import functools
import types

import pymysql

from pytest_dbleak.families.mysql import embedded

embedded.pymysql = types.SimpleNamespace(
    connect=functools.partial(pymysql.connect, ssl_disabled=True), err=pymysql.err
)
embedded._FAST_FLAGS = (*embedded._FAST_FLAGS, "--innodb-temp-data-file-path=ibtmp1:1M:autoextend")
"""
SMALL_IBTMP = "--innodb-temp-data-file-path=ibtmp1:1M:autoextend"

PHASES = (
    ("configured", "interpreter start, imports, plugins, config"),
    ("session_started", "pytest_sessionstart (ours: server + session database)"),
    ("collected", "collection (imports the test module)"),
    ("test_started", "collection_finish (ours, family not remembered: server starts)"),
    ("tested", "the test: setup, call, teardown (pytest-mysql: install + start here)"),
    ("session_finished", "pytest_sessionfinish (ours: drop database, stop server)"),
    ("unconfigured", "pytest_unconfigure (ours: a second gc.collect() in close())"),
    ("exit", "pytest's own clean-up (5 x gc.collect()), interpreter exit"),
)

# pytest-mysql for MariaDB. Its install_db / mysqld_safe / admin commands take no extra
# arguments, and the machine's /etc/mysql/my.cnf (user = mysql, log-error = the system
# server's log) would make mariadb-install-db fail as root - and write into the system
# server's error log - so each is wrapped to run with --no-defaults. MariaDB's installer
# creates a `test` database, so the fixture's database gets another name.
WRAPPER = '#!/bin/sh\nexec {target} --no-defaults "$@"\n'


def write_projects(work: c.Workdir) -> dict[str, Path]:
    root = work.path
    dirs = {name: root / name for name in ("ours", "theirs", "baseline", "imports")}
    for d in dirs.values():
        d.mkdir()
        (d / "pytest.ini").write_text("[pytest]\n")
        (d / "conftest.py").write_text(c.PHASES_CONFTEST)
    (dirs["ours"] / "test_one.py").write_text(OURS_TEST)
    (dirs["ours"] / "bench_whatif.py").write_text(WHATIF_PLUGIN)
    (dirs["baseline"] / "test_one.py").write_text(BASELINE_TEST)
    (dirs["imports"] / "test_one.py").write_text(IMPORTS_TEST)
    (dirs["theirs"] / "test_one.py").write_text(THEIRS_TEST)
    bindir = root / "bin"
    bindir.mkdir()
    wrapped = {}
    for name, target in (
        ("mariadb-install-db", "/usr/bin/mariadb-install-db"),
        ("mysqld_safe", "/usr/bin/mysqld_safe"),
        ("mariadb-admin", "/usr/bin/mariadb-admin"),
    ):
        path = bindir / name
        path.write_text(WRAPPER.format(target=target))
        path.chmod(0o755)
        wrapped[name] = path
    (dirs["theirs"] / "pytest.ini").write_text(
        "[pytest]\n"
        f"mysql_mysqld = {c.MARIADBD}\n"
        f"mysql_mysqld_safe = {wrapped['mysqld_safe']}\n"
        f"mysql_admin = {wrapped['mariadb-admin']}\n"
        f"mysql_install_db = {wrapped['mariadb-install-db']}\n"
        "mysql_user = root\n"
        "mysql_dbname = bench\n"
    )
    return dirs


BASE, IMPORTS, OURS, THEIRS, AUTOLOAD = (
    "floor: pytest, one trivial test",
    "floor + import sqlalchemy, pymysql (no server)",
    "pytest-dbleak (process backend, warm template)",
    "pytest-mysql (mysql_proc + mysql)",
    "pytest-dbleak, every installed pytest plugin autoloaded",
)
COLD = "pytest-dbleak, cold: empty --dbleak-cache-dir (template built first)"
WHATIF = (
    "what-if: pytest-dbleak with the datadir on /dev/shm (TMPDIR), no SSL context "
    "in the readiness login, 1 MiB ibtmp1"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs of each session (default 7)")
    ap.add_argument(
        "--template-runs",
        type=int,
        default=3,
        help="in-process ensure_template() runs with an empty cache (default 3)",
    )
    ap.add_argument("--timeout", type=float, default=180, help="per subprocess (s)")
    ap.add_argument("--budget", type=float, default=900, help="overall time budget (s)")
    ap.add_argument(
        "--no-pycache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE from the environment (default: cache "
        "bytecode in the bench's temp dir, as a normal install would)",
    )
    ap.add_argument("--no-what-if", action="store_true", help="skip the what-if rows")
    args = ap.parse_args()
    if c.MARIADBD is None:
        print("mariadbd not found", file=sys.stderr)
        return 2

    start_load = c.load()
    deadline = c.Deadline(args.budget)
    work = c.Workdir("server-start")
    # The in-process parts too: mariadb-install-db and mariadbd put their temporary files
    # in $TMPDIR (the plugin passes no --tmpdir), so keep them in our private dir.
    os.environ["TMPDIR"] = str(work.tmp)
    tempfile.tempdir = None
    dirs = write_projects(work)
    env = work.env(pycache=not args.no_pycache)
    env_autoload = dict(env)
    env_autoload.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    warm_cache = work.path / "cache-warm"
    phases_file = work.path / "phases.json"
    env["BENCH_PHASES"] = env_autoload["BENCH_PHASES"] = str(phases_file)

    def ours_cmd(cache: Path, *, autoload: bool = False, what_if: bool = False) -> list[str]:
        plugin = [] if autoload else ["-p", "pytest_dbleak.plugin"]
        if what_if:
            plugin += ["-p", "bench_whatif"]
        return [
            *c.PYTEST,
            "-q",
            *plugin,
            "--dbleak",
            "--dbleak-backend=process",
            f"--dbleak-cache-dir={cache}",
            "test_one.py",
        ]

    theirs_base = work.path / "theirs-basetemp"

    def theirs_cmd() -> list[str]:
        # A fresh basetemp each run (pytest-mysql installs a new datadir every session);
        # the previous one is removed first so that the disk does not fill up.
        shutil.rmtree(theirs_base, ignore_errors=True)
        return [
            *c.PYTEST,
            "-q",
            "-p",
            "pytest_mysql.plugin",
            f"--basetemp={theirs_base}",
            "test_one.py",
        ]

    cold_n = [0]

    def cold_cmd() -> list[str]:
        # An empty cache dir each time: the session builds the template first.
        cold_n[0] += 1
        shutil.rmtree(work.path / f"cache-cold-{cold_n[0] - 1}", ignore_errors=True)
        return ours_cmd(work.path / f"cache-cold-{cold_n[0]}")

    variants = {
        BASE: (lambda: [*c.PYTEST, "-q", "test_one.py"], dirs["baseline"], env),
        IMPORTS: (lambda: [*c.PYTEST, "-q", "test_one.py"], dirs["imports"], env),
        OURS: (lambda: ours_cmd(warm_cache), dirs["ours"], env),
        THEIRS: (theirs_cmd, dirs["theirs"], env),
        AUTOLOAD: (lambda: ours_cmd(warm_cache, autoload=True), dirs["ours"], env_autoload),
        COLD: (cold_cmd, dirs["ours"], env),
    }
    if not args.no_what_if and Path("/dev/shm").is_dir():
        env_shm = dict(env, TMPDIR=str(work.extra_root("/dev/shm", "server-start-session")))
        variants[WHATIF] = (lambda: ours_cmd(warm_cache, what_if=True), dirs["ours"], env_shm)

    failures: dict[str, list[str]] = {}

    def session(name: str) -> tuple[float, dict[str, float]] | None:
        make_cmd, cwd, venv = variants[name]
        cmd = make_cmd()
        phases_file.unlink(missing_ok=True)
        t0 = time.time()
        try:
            wall, _ = c.run(cmd, cwd=cwd, env=venv, timeout=args.timeout)
        except c.RunFailed as exc:  # counted and shown, not fatal
            failures.setdefault(name, []).append(str(exc).strip().splitlines()[-1][:200])
            print(f"FAILED: {name}: {exc}", file=sys.stderr)
            return None
        marks = json.loads(phases_file.read_text()) if phases_file.exists() else {}
        return wall, c.phase_spans(marks, PHASES, t0, wall)

    print("# One-test session: pytest-dbleak vs pytest-mysql\n")
    print(c.machine_table([("work dir", str(work.path))]))
    print()

    # 1. Warm-up (bytecode, page cache; the first cold run builds the warm cache), not counted.
    c.run(ours_cmd(warm_cache), cwd=dirs["ours"], env=env, timeout=args.timeout)
    for name in variants:
        session(name)
        print(f"warm-up: {name}", file=sys.stderr)

    # 2. The sessions, interleaved.
    walls: dict[str, list[float]] = {name: [] for name in variants}
    by_round: list[dict[str, float]] = []  # for paired (same-round) comparisons
    spans: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    for i in range(args.runs):
        order = list(variants)
        if i % 2:
            order.reverse()  # ABC.. ..CBA: no variant always runs right after the same one
        by_round.append({})
        for name in order:
            done = session(name)
            if done is None:
                continue
            wall, phase = done
            walls[name].append(wall)
            by_round[-1][name] = wall
            for key, value in phase.items():
                spans[name].setdefault(key, []).append(value)
        print(
            f"round {i + 1}/{args.runs}: " + ", ".join(f"{w[-1]:.2f}" for w in walls.values()),
            file=sys.stderr,
        )
        c.sample_load()
        if deadline.expired():
            break

    # 3. The server's share, in-process: start_process as shipped, and what-ifs.
    share = server_share(
        work, warm_cache, args.runs, deadline, what_if=not args.no_what_if, failures=failures
    )
    template = template_cost(work, args.template_runs, deadline, failures)

    ours, theirs, base = (c.median(walls[k]) for k in (OURS, THEIRS, BASE))
    n = len(walls[OURS])
    print(f"## Whole `python -m pytest` process, one test (median of {n} interleaved runs)\n")

    def paired(name: str, fn) -> float:  # median over rounds that ran both
        return c.median(
            fn(r[name], r[OURS], r.get(THEIRS))
            for r in by_round
            if name in r and OURS in r and THEIRS in r
        )

    rows = []
    for name, w in walls.items():
        if not w:
            continue
        med = c.median(w)
        rows.append(
            (
                name,
                c.s(med),
                f"{min(w):.2f} - {max(w):.2f}",
                len(w),
                f"{theirs / med:.1f}x",
                f"{paired(name, lambda x, _o, t: t / x):.1f}x",
                f"{paired(name, lambda x, o, _t: x - o):+.2f}",
            )
        )
    print(
        c.table(
            (
                "session",
                "median wall (s)",
                "min - max (s)",
                "runs",
                "pytest-mysql's median / this",
                "same round: pytest-mysql / this (median)",
                "same round: this - pytest-dbleak (median, s)",
            ),
            rows,
        )
    )
    print()
    print("## Where the wall time goes (median of each phase, s)\n")
    shown = tuple(k for k in (BASE, IMPORTS, OURS, COLD, THEIRS, WHATIF) if k in walls)
    print(
        c.table(
            ("phase", *shown),
            [
                (label, *(c.s(c.median(spans[name].get(key, [])), 3) for name in shown))
                for key, label in PHASES
            ],
        )
    )
    print()
    print("## Server share of our session (in-process, median)\n")
    print(c.table(("step", "median (ms)", "min - max (ms)", "runs"), share))
    print()
    print(c.table(("template (one-time, per mariadbd binary)", "median (s)", "runs"), template))
    print()
    shipped = [r for r in share if r[0].startswith("start_process")]
    start_med = float(shipped[0][1]) / 1000 if shipped else float("nan")
    print("## Targets\n")
    print(
        c.table(
            ("target", "measured", "met"),
            [
                (
                    "ours >= 3x faster than pytest-mysql "
                    "(whole process; median of same-round ratios)",
                    f"{paired(OURS, lambda x, _o, t: t / x):.1f}x",
                    "yes" if paired(OURS, lambda x, _o, t: t / x) >= 3 else "NO",
                ),
                (
                    "server share well under 0.5 s (start_process, shipped)",
                    f"{start_med:.3f} s",
                    "yes" if start_med < 0.35 else ("borderline" if start_med < 0.5 else "NO"),
                ),
                (
                    "one-test session well under 1 s wall",
                    f"{ours:.2f} s",
                    "yes" if ours < 0.8 else ("borderline" if ours < 1.0 else "NO"),
                ),
                ("(floor: the same pytest, trivial test, no database)", f"{base:.2f} s", ""),
            ],
        )
    )
    print()
    if failures:
        print("## Failed runs (not counted)\n")
        print(
            c.table(
                ("what", "failures", "last error"),
                [(k, len(v), v[-1].replace("|", "/")) for k, v in failures.items()],
            )
        )
        print()
    print(c.busy_note(start_load))
    print(deadline.note())
    work.close()
    print(work.report_cleanup())
    return 0


def server_share(
    work: c.Workdir,
    cache: Path,
    runs: int,
    deadline: c.Deadline,
    *,
    what_if: bool,
    failures: dict[str, list[str]],
) -> list[tuple[str, str, str, int]]:
    import pymysql

    from pytest_dbleak.families.mysql import embedded

    binary = embedded.find_mysqld(None)
    shm = None
    if what_if and Path("/dev/shm").is_dir():
        shm = work.extra_root("/dev/shm", "server-start")
    no_ssl = types.SimpleNamespace(
        connect=functools.partial(pymysql.connect, ssl_disabled=True), err=pymysql.err
    )

    @contextlib.contextmanager
    def patched(tmp: Path, ssl_off: bool | str):
        # The plugin now imports PyMySQL inside the function and disables SSL on the
        # readiness login itself: the ssl what-if is kept only for older versions.
        old_tmp, old_flags = tempfile.tempdir, embedded._FAST_FLAGS
        old_mod = getattr(embedded, "pymysql", None)
        old_env = os.environ["TMPDIR"]
        tempfile.tempdir = os.environ["TMPDIR"] = str(tmp)
        if ssl_off and old_mod is not None:
            embedded.pymysql = no_ssl  # type: ignore[attr-defined]
        if ssl_off == "ibtmp":
            embedded._FAST_FLAGS = (*old_flags, SMALL_IBTMP)
        try:
            yield
        finally:
            tempfile.tempdir = old_tmp
            if old_mod is not None:
                embedded.pymysql = old_mod  # type: ignore[attr-defined]
            embedded._FAST_FLAGS, os.environ["TMPDIR"] = old_flags, old_env

    variants = {
        "start_process (shipped): copy template + start + first login + secure": (work.tmp, False)
    }
    if what_if:
        variants["what-if: + ssl_disabled=True on the readiness login"] = (work.tmp, True)
        if shm is not None:
            variants["what-if: + datadir on /dev/shm (tmpfs)"] = (shm, False)
            variants["what-if: both"] = (shm, True)
            variants["what-if: both + 1 MiB ibtmp1"] = (shm, "ibtmp")
    starts: dict[str, list[float]] = {k: [] for k in variants}
    stops: list[float] = []
    for i in range(runs + 1):  # the first round warms up
        for name, (tmp, ssl_off) in variants.items():
            with patched(tmp, ssl_off):
                t0 = time.perf_counter()
                try:
                    server = embedded.start_process(binary, cache, 60)
                except embedded.DbleakError as exc:
                    failures.setdefault(name, []).append(str(exc)[:200])
                    continue
                t1 = time.perf_counter()
                server.stop()
                t2 = time.perf_counter()
            if i:
                starts[name].append(t1 - t0)
                if name.startswith("start_process"):
                    stops.append(t2 - t1)
        c.sample_load()
        if deadline.expired():
            break
    rows = [
        (name, c.ms(c.median(v), 0), f"{c.ms(min(v), 0)} - {c.ms(max(v), 0)}", len(v))
        for name, v in starts.items()
        if v
    ]
    if stops:
        rows.append(
            (
                "stop (reaper: kill -9, remove datadir)",
                c.ms(c.median(stops), 0),
                f"{c.ms(min(stops), 0)} - {c.ms(max(stops), 0)}",
                len(stops),
            )
        )
    return rows


def template_cost(
    work: c.Workdir, runs: int, deadline: c.Deadline, failures: dict[str, list[str]]
) -> list[tuple[str, str, int]]:

    from pytest_dbleak.families.mysql import embedded

    binary = embedded.find_mysqld(None)
    times = []
    for i in range(runs):
        cache = work.path / f"cache-template-{i}"
        t0 = time.perf_counter()
        try:
            embedded.ensure_template(binary, cache)
            times.append(time.perf_counter() - t0)
        except embedded.DbleakError as exc:
            failures.setdefault("ensure_template (in-process)", []).append(str(exc)[:200])
        shutil.rmtree(cache, ignore_errors=True)
        c.sample_load()
        if deadline.expired():
            break
    return [
        (
            "ensure_template with an empty cache (mariadb-install-db)",
            c.s(c.median(times)) if times else "failed",
            len(times),
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
