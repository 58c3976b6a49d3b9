"""SQLAlchemy's own test suite, with and without ``--dbleak``: every failure the plugin adds.

    python bench/sqlalchemy_suite.py [--sdist PATH] [--only baseline|dbleak|both]
                                     [--work DIR] [--timeout S] [TEST_PATH ...]

SQLAlchemy's test suite ships in its sdist (``test/`` plus the pytest plugin in
``lib/sqlalchemy/testing/plugin``). The script takes the sdist of the installed
SQLAlchemy version from PyPI (``pip download --no-binary :all: --no-deps``) unless
``--sdist`` names a local one, unpacks it, and runs the
selection from the unpacked directory, so that the suite's own ``conftest.py`` and
``pyproject.toml`` options apply (``--maxfail`` lifted):

* baseline: a private mariadbd (``--no-defaults``, started with the plugin's process
  backend code), the suite's ``--dburi`` pointed at it, no ``--dbleak``;
* dbleak: ``--dbleak`` on the process backend; a small bridge plugin points ``--dburi``
  at the plugin's own server before SQLAlchemy's plugin reads it (SQLAlchemy reads
  ``--dburi`` in ``pytest_sessionstart``), so every connection of the suite is watched.

Both runs write JUnit XML; the dbleak run also writes the plugin's JSON report. The
script prints the outcome counts, the exit codes, whether the run ended with a summary,
and every test that passes without the plugin and fails with it, with its leak kinds
(``other`` for a failure that is not a leak verdict: that is a bug of the plugin).

Nothing is fetched at run time but the sdist from PyPI.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import _common as c

SELECTION = [
    "test/engine",
    "test/orm/test_session.py",
    "test/orm/test_transaction.py",
    "test/dialect/mysql",
]

BRIDGE = '''\
"""Points SQLAlchemy's --dburi at the session's server before its plugin reads it."""
import os

import pymysql
import pytest
from sqlalchemy.engine import make_url

SCHEMAS = ("test", "test_schema", "test_schema_2")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    config = session.config
    admin = os.environ.get("SQLA_BENCH_ADMIN_URL")
    if not admin:
        from pytest_dbleak.pytest_layer.manager import MANAGER

        manager = config.stash[MANAGER]
        admin = manager.runtime.server().info.admin_url
    url = make_url(admin)
    conn = pymysql.connect(
        host=url.host, port=url.port, user=url.username, password=url.password or ""
    )
    try:
        with conn.cursor() as cur:
            for name in SCHEMAS:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4")
    finally:
        conn.close()
    dburi = url.set(database="test", query={"charset": "utf8mb4"})
    config.option.dburi = [dburi.render_as_string(hide_password=False)]
'''


# -- the sdist ---------------------------------------------------------------------
def fetch_sdist(version: str, dest: Path) -> Path:
    """The sdist of SQLAlchemy `version`, through pip (which checks PyPI's hashes). pip
    prepares the sdist's metadata, which installs its build requirements in an isolated
    environment: a minute or two the first time."""
    dest.mkdir(parents=True, exist_ok=True)
    for found in dest.glob(f"*alchemy-{version}.tar.gz"):
        return found
    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    done = subprocess.run([*pip, f"sqlalchemy=={version}", "-d", str(dest)])
    for found in dest.glob(f"*alchemy-{version}.tar.gz"):
        return found
    raise SystemExit(
        f"pip download of the SQLAlchemy {version} sdist failed ({done.returncode}); "
        "give a local sdist with --sdist"
    )


def unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        if not (dest / top).is_dir():
            tar.extractall(dest, filter="data")
    return dest / top


# -- one run -----------------------------------------------------------------------
def run_suite(
    src: Path, work: Path, name: str, tests: list[str], extra: list[str], env_extra: dict[str, str]
) -> dict[str, object]:
    junit = work / f"{name}.xml"
    log = work / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-p",
        "dbleak_sqla_bridge",
        "--maxfail=1000000",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *extra,
    ]
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(work), str(c.REPO), env.get("PYTHONPATH", "")) if p
    )
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    tail = text.splitlines()[-1] if text.strip() else ""
    return {
        "name": name,
        "rc": proc.returncode,
        "seconds": elapsed,
        "outcomes": junit_outcomes(junit),
        "summary": " in " in tail and ("passed" in tail or "failed" in tail),
        # A run that ends in a traceback (the plugin raising at session end) has no summary.
        "traceback": "Traceback (most recent call last)" in text[-20000:]
        and not (" in " in tail and ("passed" in tail or "failed" in tail)),
        "tail": tail,
        "log": log,
    }


def junit_outcomes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        if outcomes.get(nodeid) != "failed":  # a teardown error after a pass: failed
            outcomes[nodeid] = outcome
    return outcomes


def leak_kinds(report: Path) -> dict[str, list[str]]:
    """nodeid (JUnit's classname::name form) -> the kinds of its failing leaks."""
    if not report.exists():
        return {}
    kinds: dict[str, list[str]] = {}
    for test in json.loads(report.read_text())["tests"]:
        if not test["leaks"] or not test["failed"]:
            continue
        path, _, rest = test["nodeid"].partition("::")
        classname = path.removesuffix(".py").replace("/", ".")
        parts = rest.split("::")
        key = ".".join([classname, *parts[:-1]]) + "::" + parts[-1]
        kinds[key] = sorted({leak["kind"] for leak in test["leaks"]})
        kinds[key + "#what"] = [leak["what"] for leak in test["leaks"]]
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tests", nargs="*", default=SELECTION)
    ap.add_argument("--sdist", type=Path)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--only", choices=("baseline", "dbleak", "both"), default="both")
    ap.add_argument("--extra", action="append", default=[], help="more pytest arguments")
    args = ap.parse_args()

    import sqlalchemy

    work = args.work or Path(tempfile.mkdtemp(prefix="dbleak-sqla-"))
    work.mkdir(parents=True, exist_ok=True)
    sdist = args.sdist or fetch_sdist(sqlalchemy.__version__, work / "sdist")
    src = unpack(sdist, work)
    (work / "dbleak_sqla_bridge.py").write_text(BRIDGE)
    print(f"SQLAlchemy {sqlalchemy.__version__} suite from {sdist.name}; work dir {work}")
    print(f"selection: {' '.join(args.tests)}", flush=True)

    runs = {}
    if args.only in ("baseline", "both"):
        from pytest_dbleak.families.mysql.embedded import start_process

        server = start_process(c.MARIADBD, work / "template-cache", 120.0)
        try:
            from pytest_dbleak.families.mysql.family import describe

            admin = describe(server, "").admin_url
            runs["baseline"] = run_suite(
                src, work, "baseline", args.tests, args.extra, {"SQLA_BENCH_ADMIN_URL": admin}
            )
        finally:
            server.stop()
    if args.only in ("dbleak", "both"):
        extra = [
            "--dbleak",
            "--dbleak-backend=process",
            f"--dbleak-cache-dir={work / 'template-cache'}",
            f"--dbleak-report={work / 'dbleak.json'}",
            *args.extra,
        ]
        runs["dbleak"] = run_suite(src, work, "dbleak", args.tests, extra, {})

    rows = []
    for name, run in runs.items():
        counts = collections.Counter(run["outcomes"].values())  # type: ignore[union-attr]
        rows.append(
            [
                name,
                counts["passed"],
                counts["failed"],
                counts["skipped"],
                run["rc"],
                "yes" if run["summary"] else "no",
                "yes" if run["traceback"] else "no",
                c.s(run["seconds"], 1),  # type: ignore[arg-type]
            ]
        )
    print()
    headers = ["run", "passed", "failed", "skipped", "exit", "summary", "ends in a traceback", "s"]
    print(c.table(headers, rows))
    for run in runs.values():
        print(f"{run['name']}: {run['tail']}  (log: {run['log']})")

    earlier = work / "baseline.xml"
    if "baseline" not in runs and "dbleak" in runs and earlier.exists():
        print(f"(baseline outcomes from an earlier run: {earlier})")
        runs["baseline"] = {"outcomes": junit_outcomes(earlier)}
    if len(runs) == 2:
        base = runs["baseline"]["outcomes"]
        ours = runs["dbleak"]["outcomes"]
        kinds = leak_kinds(work / "dbleak.json")
        added = sorted(
            n
            for n, o in ours.items()
            if o == "failed" and base.get(n) == "passed"  # type: ignore[union-attr]
        )
        by_kind: collections.Counter[str] = collections.Counter()
        print(f"\nadded failures: {len(added)}")
        for nodeid in added:
            found = kinds.get(nodeid, ["other"])
            by_kind.update(found)
            print(f"  {nodeid}: {', '.join(found)}")
            for what in kinds.get(nodeid + "#what", []):
                print(f"      {what}")
        print("by kind: " + (", ".join(f"{k} {n}" for k, n in by_kind.most_common()) or "none"))
    print(f"(logs, JUnit XML and the JSON report are kept in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
