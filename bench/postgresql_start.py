"""One-test PostgreSQL session: pytest-dbleak's process backend vs pytest-postgresql.

    python bench/postgresql_start.py [--runs 7] [--budget 900]

Side by side in one run, interleaved (A B C D, then D C B A, ...) after a warm-up,
medians of N whole ``python -m pytest`` processes, each running one test that does
``SELECT 1`` through a SQLAlchemy engine:

* **floor**: the same pytest + SQLAlchemy + psycopg process, without a server: the test
  module imports psycopg, builds (does not connect) a ``postgresql+psycopg`` engine so
  that SQLAlchemy's PostgreSQL dialect is loaded too, and runs ``SELECT 1`` on in-memory
  SQLite (as ``cold_start.py`` does for MySQL: the machine's own server is not used);
* **dbleak, family not remembered**: ``pytest --dbleak -p no:cacheprovider`` with a test
  that requests ``dbleak_postgresql_url`` (process backend, warm template cache): the
  plugin learns the family from the collected tests and starts PostgreSQL after
  collection;
* **dbleak, family remembered**: the same with pytest's cache on, so that the previous
  run of the suite remembered the family and PostgreSQL starts before collection;
* **pytest-postgresql**: the same test over its ``postgresql`` fixture's connection (its
  default ``postgresql_proc``: ``pg_ctl initdb`` and ``pg_ctl start`` every session).

Then, in-process, where each server's time goes: the plugin's ``start_postgres`` (copy
the template, start postgres, first login, set the admin password) and stop, against
``pg_ctl initdb`` / ``pg_ctl start -w`` / ``pg_ctl stop -m f`` run as pytest-postgresql
runs them.

PostgreSQL refuses to run as root. As root the plugin runs it as ``nobody`` (through
``setpriv``), which must be able to walk into the session's folder under ``$TMPDIR``:
the private TMPDIR is therefore made 0711. pytest-postgresql has no such switch: its
``pg_ctl`` is given (``--postgresql-exec``) as a two-line wrapper that runs the real one
in a user namespace as a non-root user mapped to root (``unshare --user
--map-user=1000``), so that the files it writes are root's as pytest's are. As another
user neither is needed and the real ``pg_ctl`` is used.

The plugin's modules are byte-compiled first, as a regular install leaves them, and
bytecode is cached in the work dir. Plugin autoloading is off in every run (each plugin
is given with ``-p``). pytest-postgresql must be importable (``pip install -r
bench/requirements.txt``; ``--site DIR`` adds a folder it was installed to with ``pip
install --target``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c

PG_BIN = Path("/usr/lib/postgresql/15/bin")

OURS_TEST = """\
import sqlalchemy as sa


def test_select_1(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""

# The same test over pytest-postgresql's connection (StaticPool, not disposed: the
# fixture closes its connection itself), as server_start.py does with pytest-mysql.
THEIRS_TEST = """\
import sqlalchemy as sa


def test_select_1(postgresql):
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: postgresql, poolclass=sa.pool.StaticPool
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
"""

FLOOR_TEST = """\
import psycopg  # noqa: F401 - the floor imports what the checked session imports
import sqlalchemy as sa

# Loads SQLAlchemy's PostgreSQL dialect, as the other sessions' engines do; no connection.
sa.create_engine("postgresql+psycopg://bench@127.0.0.1:1/none")


def test_select_1():
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""

PHASES = (
    ("configured", "interpreter start, imports, plugins, config"),
    ("session_started", "pytest_sessionstart (dbleak, family remembered: server starts)"),
    ("collected", "collection (imports the test module)"),
    ("test_started", "collection_finish (dbleak, family not remembered: server starts)"),
    ("tested", "the test: setup, call, teardown (pytest-postgresql: initdb, start, stop)"),
    ("session_finished", "pytest_sessionfinish (dbleak: drop database, stop server)"),
    ("unconfigured", "pytest_unconfigure"),
    ("exit", "pytest's own clean-up, interpreter exit"),
)

# pg_ctl as a non-root user mapped to root in a user namespace (see the docstring).
WRAPPER = '#!/bin/sh\nexec unshare --user --map-user=1000 --map-group=1000 {target} "$@"\n'

FLOOR = "floor: pytest + SQLAlchemy + psycopg, no server"
NOT_REMEMBERED = "pytest-dbleak `--dbleak -p no:cacheprovider` (family not remembered)"
REMEMBERED = "pytest-dbleak `--dbleak`, cache on (family remembered)"
THEIRS = "pytest-postgresql (`postgresql_proc` + `postgresql`)"


def pg_ctl_for(work: c.Workdir) -> Path:
    """pytest-postgresql's pg_ctl: the real one, or as root the user-namespace wrapper."""
    real = PG_BIN / "pg_ctl"
    if os.geteuid() != 0:
        return real
    wrapper = work.path / "bin" / "pg_ctl"
    wrapper.parent.mkdir()
    wrapper.write_text(WRAPPER.format(target=real))
    wrapper.chmod(0o755)
    probe = subprocess.run(
        ["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        raise SystemExit(
            "running as root, and user namespaces are not available for pytest-postgresql's "
            f"pg_ctl: {probe.stderr.strip()}"
        )
    return wrapper


def write_projects(work: c.Workdir, pg_ctl: Path) -> dict[str, Path]:
    dirs = {name: work.path / name for name in ("floor", "ours", "ours-cached", "theirs")}
    for d in dirs.values():
        d.mkdir()
        (d / "pytest.ini").write_text("[pytest]\n")
        (d / "conftest.py").write_text(c.PHASES_CONFTEST)
    (dirs["floor"] / "test_one.py").write_text(FLOOR_TEST)
    (dirs["ours"] / "test_one.py").write_text(OURS_TEST)
    (dirs["ours-cached"] / "test_one.py").write_text(OURS_TEST)
    (dirs["theirs"] / "test_one.py").write_text(THEIRS_TEST)
    (dirs["theirs"] / "pytest.ini").write_text(f"[pytest]\npostgresql_exec = {pg_ctl}\n")
    return dirs


def private_cache(work: c.Workdir) -> Path:
    """A private template cache with the shared PostgreSQL templates copied in."""
    cache = work.path / "cache"
    cache.mkdir()
    shared = Path(
        os.environ.get("DBLEAK_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-dbleak"
    )
    for template in shared.glob("pg-template-*"):
        if (template / "READY").exists():
            shutil.copytree(template, cache / template.name, symlinks=True)
    return cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs of each session (default 7)")
    ap.add_argument("--timeout", type=float, default=120, help="per pytest run (s)")
    ap.add_argument("--budget", type=float, default=900, help="overall time budget (s)")
    ap.add_argument(
        "--site",
        action="append",
        default=[],
        help="a folder to put on PYTHONPATH (e.g. pytest-postgresql installed there with "
        "pip install --target)",
    )
    args = ap.parse_args()
    sys.path.extend(args.site)  # for the versions shown
    if not (PG_BIN / "postgres").exists():
        print(f"{PG_BIN}/postgres not found", file=sys.stderr)
        return 2

    # What a regular `pip install` leaves: the plugin's bytecode (see cold_start.py).
    compileall.compile_dir(c.REPO / "pytest_dbleak", quiet=1)
    start_load = c.load()
    deadline = c.Deadline(args.budget)
    work = c.Workdir("pg-start")
    # As root, postgres runs as `nobody` and must walk through TMPDIR to its folder.
    work.tmp.chmod(0o711)
    # The in-process part too: the plugin's session folders go to $TMPDIR.
    os.environ["TMPDIR"] = str(work.tmp)
    tempfile.tempdir = None
    postgres_before = pgrep_postgres()
    pg_ctl = pg_ctl_for(work)
    dirs = write_projects(work, pg_ctl)
    cache = private_cache(work)
    phases_file = work.path / "phases.json"
    path = os.pathsep.join([str(c.REPO), *args.site, os.environ.get("PYTHONPATH", "")])
    env = work.env(
        DBLEAK_CACHE_DIR=str(cache),
        PYTHONPATH=path.rstrip(os.pathsep),
        BENCH_PHASES=str(phases_file),
    )
    ours = [*c.PYTEST, "-q", "-p", "pytest_dbleak.plugin", "--dbleak", "--dbleak-backend=process"]
    theirs_base = work.path / "theirs-basetemp"

    def theirs_cmd() -> list[str]:
        # A fresh basetemp each run; the previous one is removed first.
        shutil.rmtree(theirs_base, ignore_errors=True)
        return [
            *c.PYTEST,
            "-q",
            "-p",
            "pytest_postgresql.plugin",
            f"--basetemp={theirs_base}",
            "test_one.py",
        ]

    variants = {
        FLOOR: (lambda: [*c.PYTEST, "-q", "test_one.py"], dirs["floor"]),
        NOT_REMEMBERED: (lambda: [*ours, "-p", "no:cacheprovider", "test_one.py"], dirs["ours"]),
        REMEMBERED: (lambda: [*ours, "test_one.py"], dirs["ours-cached"]),
        THEIRS: (theirs_cmd, dirs["theirs"]),
    }
    failures: dict[str, list[str]] = {}

    def session(name: str) -> tuple[float, dict[str, float]] | None:
        make_cmd, cwd = variants[name]
        cmd = make_cmd()
        phases_file.unlink(missing_ok=True)
        t0 = time.time()
        try:
            wall, out = c.run(cmd, cwd=cwd, env=env, timeout=args.timeout)
        except c.RunFailed as exc:  # counted and shown, not fatal
            failures.setdefault(name, []).append(str(exc).strip().splitlines()[-1][:200])
            print(f"FAILED: {name}: {exc}", file=sys.stderr)
            return None
        if "1 passed" not in out:
            failures.setdefault(name, []).append(out.strip().splitlines()[-1][:200])
            return None
        marks = json.loads(phases_file.read_text()) if phases_file.exists() else {}
        return wall, c.phase_spans(marks, PHASES, t0, wall)

    print("# One-test PostgreSQL session: pytest-dbleak vs pytest-postgresql\n")
    print(
        c.machine_table(
            [
                ("PostgreSQL", c._first_line([str(PG_BIN / "postgres"), "--version"])),
                (
                    "psycopg / pytest-postgresql",
                    f"{c._version('psycopg')} / {c._version('pytest-postgresql')}",
                ),
                ("running as", f"uid {os.geteuid()}"),
                ("work dir", str(work.path)),
            ]
        )
    )
    print()

    # 1. Warm-up (bytecode, page cache, the template if the shared cache had none, the
    # remembered family in ours-cached/.pytest_cache), not counted.
    for name in variants:
        session(name)
        print(f"warm-up: {name}", file=sys.stderr)

    # 2. The sessions, interleaved.
    walls: dict[str, list[float]] = {name: [] for name in variants}
    by_round: list[dict[str, float]] = []
    spans: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    for i in range(args.runs):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
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
            f"round {i + 1}/{args.runs}: "
            + ", ".join(f"{w[-1]:.2f}" if w else "-" for w in walls.values()),
            file=sys.stderr,
        )
        c.sample_load()
        if deadline.expired():
            break

    # 3. The servers' share, in-process.
    share = server_share(work, cache, pg_ctl, args.runs, deadline, failures)

    theirs = c.median(walls[THEIRS])
    floor = c.median(walls[FLOOR])

    def paired(name: str) -> float:  # median over rounds that ran both
        return c.median(r[THEIRS] / r[name] for r in by_round if name in r and THEIRS in r)

    n = min(len(w) for w in walls.values())
    print(f"## Whole `python -m pytest` process, one test (median of {n} interleaved runs)\n")
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
                f"+{c.s(med - floor)}" if name != FLOOR else "",
                f"{theirs / med:.1f}x",
                f"{paired(name):.1f}x",
            )
        )
    print(
        c.table(
            (
                "session",
                "median wall (s)",
                "min - max (s)",
                "runs",
                "over the floor (s)",
                "pytest-postgresql's median / this",
                "same round: pytest-postgresql / this (median)",
            ),
            rows,
        )
    )
    print()
    print("## Where the wall time goes (median of each phase, s)\n")
    print(
        c.table(
            ("phase", *variants),
            [
                (label, *(c.s(c.median(spans[name].get(key, [])), 3) for name in variants))
                for key, label in PHASES
            ],
        )
    )
    print()
    print("## The servers' share, in-process (median)\n")
    print(c.table(("step", "median (ms)", "min - max (ms)", "runs"), share))
    print()
    print("## Target\n")
    print(
        c.table(
            ("target", "measured (same-round median)", "met"),
            [
                (
                    f"pytest-dbleak >= 3x faster than pytest-postgresql: {name}",
                    f"{paired(name):.1f}x",
                    "yes" if paired(name) >= 3 else "NO",
                )
                for name in (NOT_REMEMBERED, REMEMBERED)
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
    ours_left = [p for p in work.our_processes() if "postgres" in p[1]]
    work.close()
    print(
        f"`pgrep -a postgres`: {len(postgres_before)} before, {len(pgrep_postgres())} after "
        "(the machine's own server and other people's test servers included); servers of "
        f"this script still running at the end: {len(ours_left)} (before the clean-up), "
        f"{len([p for p in work.our_processes() if 'postgres' in p[1]])} (after)."
    )
    return 0


def server_share(
    work: c.Workdir,
    cache: Path,
    pg_ctl: Path,
    runs: int,
    deadline: c.Deadline,
    failures: dict[str, list[str]],
) -> list[tuple[str, str, str, int]]:
    """Each server's start and stop, timed in this process: the plugin's start_postgres
    and pytest-postgresql's pg_ctl calls (the same arguments as its executor's)."""
    sys.path.insert(0, str(c.REPO))
    from pytest_dbleak.engine.errors import DbleakError
    from pytest_dbleak.families._process import free_port
    from pytest_dbleak.families.postgresql import embedded

    binary = str(PG_BIN / "postgres")
    steps: dict[str, list[float]] = {
        k: []
        for k in (
            "pytest-dbleak `start_postgres`: copy template, start, first login, password",
            "pytest-dbleak stop (reaper: kill -9, remove the folder)",
            "pytest-postgresql `pg_ctl initdb`",
            "pytest-postgresql `pg_ctl start -w` (until it takes connections)",
            "pytest-postgresql `pg_ctl stop -m f`",
        )
    }
    names = list(steps)
    env = dict(os.environ, LC_ALL="C.UTF-8", LC_CTYPE="C.UTF-8", LANG="C.UTF-8")
    for i in range(runs):
        if deadline.expired():
            break
        try:
            t = time.perf_counter()
            server = embedded.start_postgres(binary, cache, 30)
            steps[names[0]].append(time.perf_counter() - t)
            t = time.perf_counter()
            server.stop()
            steps[names[1]].append(time.perf_counter() - t)
            root = work.path / f"pg-ctl-{i}"
            root.mkdir()
            datadir, log = root / "data", root / "postgresql.log"
            t = time.perf_counter()
            subprocess.run(
                [pg_ctl, "initdb", "--pgdata", datadir, "-o", "--username=postgres --auth=trust"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            steps[names[2]].append(time.perf_counter() - t)
            options = (
                f"-F -p {free_port()} -c log_destination='stderr' -c logging_collector=off "
                f"-c unix_socket_directories='{work.tmp}'"
            )
            t = time.perf_counter()
            subprocess.run(
                [pg_ctl, "start", "-D", datadir, "-o", options, "-l", log, "-w"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            steps[names[3]].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(
                [pg_ctl, "stop", "-D", datadir, "-m", "f"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            steps[names[4]].append(time.perf_counter() - t)
            shutil.rmtree(root, ignore_errors=True)
        except (subprocess.SubprocessError, OSError, DbleakError) as exc:
            failures.setdefault("in-process server share", []).append(str(exc)[:200])
    return [
        (k, c.ms(c.median(v)), f"{c.ms(min(v))} - {c.ms(max(v))}" if v else "", len(v))
        for k, v in steps.items()
    ]


def pgrep_postgres() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "postgres"], capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
