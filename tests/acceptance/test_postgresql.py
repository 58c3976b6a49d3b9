"""PostgreSQL suites under ``pytest --dbleak``: the same gate as MySQL's.

Every inner run here requests only ``dbleak_postgresql_*`` fixtures: the session checks
PostgreSQL (chosen from those fixtures) on the process backend or, through
``--dbleak-postgresql-url``, on a server given by URL - a ``postgres`` this suite starts
for it, never the machine's own. Each leak kind fails its leaky test at the user's line
and passes its clean twin, in the full run, alone and under ``-n 2``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, failure_of, line_of, only_dbleak_and

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from pytest_dbleak.families.postgresql.embedded import find_postgres

PG_PREAMBLE = """\
import threading

import psycopg
import pytest
import sqlalchemy as sa

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends


def in_thread(fn):
    thread = threading.Thread(target=fn, name="worker")
    thread.start()
    thread.join()
"""

LEAK_KINDS = '''
@pytest.fixture(scope="module")
def engine(dbleak_postgresql_url):
    """The application's engine: outlives every test, never resets on return."""
    engine = sa.create_engine(dbleak_postgresql_url, pool_reset_on_return=None)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("INSERT INTO items (name) VALUES ('first')"))
    yield engine
    engine.dispose()


def test_leaky_checkout(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    KEEP.append(engine.connect())  # LEAK-checkout


def test_clean_checkout(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_leaky_raw_connection(dbleak_postgresql_database):
    KEEP.append(psycopg.connect(**dbleak_postgresql_database.connect_kwargs()))  # LEAK-raw


def test_clean_raw_connection(dbleak_postgresql_database):
    psycopg.connect(**dbleak_postgresql_database.connect_kwargs()).close()


def test_leaky_raw_connection_in_a_thread(dbleak_postgresql_database):
    kwargs = dbleak_postgresql_database.connect_kwargs()
    in_thread(lambda: KEEP.append(psycopg.connect(**kwargs)))  # LEAK-thread


def test_clean_raw_connection_in_a_thread(dbleak_postgresql_database):
    kwargs = dbleak_postgresql_database.connect_kwargs()
    in_thread(lambda: psycopg.connect(**kwargs).close())


def run_and_return(engine, sql, end=None):
    raw = engine.raw_connection()  # LEAK-trx
    cursor = raw.cursor()
    cursor.execute(sql)
    cursor.close()
    if end is not None:
        getattr(raw, end)()
    raw.close()


def test_leaky_transaction(engine):
    run_and_return(engine, "UPDATE items SET name = 'second' WHERE id = 1")


def test_clean_transaction(engine):
    run_and_return(engine, "UPDATE items SET name = 'third' WHERE id = 1", end="commit")


def test_leaky_engine(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)  # LEAK-engine
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    KEEP.append(engine)


def test_clean_engine(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()
'''
LEAKY = {
    "test_leaky_checkout": ("checked_out", "# LEAK-checkout"),
    "test_leaky_raw_connection": ("server_connection", "# LEAK-raw"),
    "test_leaky_raw_connection_in_a_thread": ("server_connection", "# LEAK-thread"),
    "test_leaky_transaction": ("open_transaction", "# LEAK-trx"),
    "test_leaky_engine": ("undisposed_engine", "# LEAK-engine"),
}


def run(
    pytester: pytest.Pytester, args: list[str], *extra: str, plugins: tuple[str, ...] = ONLY_DBLEAK
) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--dbleak", *args, FAST, *plugins, *extra)


def verdicts(report: Path) -> dict[str, list[str]]:
    data = json.loads(report.read_text())
    return {
        t["nodeid"].split("::")[-1]: sorted(leak["kind"] for leak in t["leaks"])
        for t in data["tests"]
    }


def test_every_leak_kind_on_postgresql_fails_at_the_users_line_and_its_clean_twin_passes(
    pytester: pytest.Pytester, pg_every_backend_args: list[str]
) -> None:
    pg_backend_args = pg_every_backend_args
    pytester.makepyfile(test_pg=PG_PREAMBLE + LEAK_KINDS)
    result = run(pytester, pg_backend_args, "--dbleak-report=full.json", "--junitxml=junit.xml")

    result.assert_outcomes(failed=len(LEAKY), passed=len(LEAKY))
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count('<property name="dbleak_numbackends" value="') == len(LEAKY)
    source = PG_PREAMBLE + LEAK_KINDS
    for name, (kind, marker) in LEAKY.items():
        block = failure_of(result, name)
        assert block.lines[1].startswith(
            f"dbleak: 1 connection leaked (1 {kind}) at test_pg.py:{line_of(source, marker)}"
        ), block.str()
        block.fnmatch_lines(["*- dbleak -*", "numbackends: * before, * after"])
    # What the transaction holds, on its line: the row it updated, the table it locks.
    failure_of(result, "test_leaky_transaction").fnmatch_lines(
        [
            "*idle in a pool inside a transaction (began ????-??-?? ??:??:??*"
            "1 row modified, locks on public.items)*"
        ]
    )
    report = json.loads((pytester.path / "full.json").read_text())
    assert report["server"]["family"] == "postgresql"
    assert report["server"]["counter"] == "numbackends"
    assert report["server"]["version"].startswith("PostgreSQL ")


def test_a_postgresql_suite_gives_one_verdict_alone_and_under_xdist(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    pytester.makepyfile(test_pg=PG_PREAMBLE + LEAK_KINDS)
    run(pytester, pg_backend_args, "--dbleak-report=full.json")
    full = verdicts(pytester.path / "full.json")
    assert {n for n, kinds in full.items() if kinds} == set(LEAKY)

    xdist = run(
        pytester,
        pg_backend_args,
        "-n",
        "2",
        "--dbleak-report=xdist.json",
        plugins=only_dbleak_and("xdist"),
    )
    xdist.assert_outcomes(failed=len(LEAKY), passed=len(LEAKY))
    assert verdicts(pytester.path / "xdist.json") == full

    for name in ("test_leaky_transaction", "test_clean_transaction", "test_leaky_engine"):
        run(pytester, pg_backend_args, f"test_pg.py::{name}", "--dbleak-report=alone.json")
        assert verdicts(pytester.path / "alone.json") == {name: full[name]}, name


SERVER_PORTS = """
import os


def test_{n}(dbleak_postgresql_server, dbleak_postgresql_url):
    with open(f"port-{{os.getpid()}}-{n}", "w") as f:
        f.write(str(dbleak_postgresql_server.port))
"""


def test_xdist_workers_share_one_postgresql_server_and_no_mysql_server_is_needed(
    pytester: pytest.Pytester,
) -> None:
    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    pytester.makepyfile(**{f"test_{n}": SERVER_PORTS.format(n=n) for n in range(6)})
    # A MySQL server would be a usage error: the suite requests only PostgreSQL.
    result = run(
        pytester,
        ["--dbleak-mysqld=/nowhere/mariadbd"],
        "-n",
        "2",
        plugins=only_dbleak_and("xdist"),
    )
    result.assert_outcomes(passed=6)
    ports = {p.read_text() for p in pytester.path.glob("port-*")}
    pids = {p.name.split("-")[1] for p in pytester.path.glob("port-*")}
    assert len(pids) == 2, "both workers ran tests"
    assert len(ports) == 1, f"one server for every worker, got {ports}"


def test_the_family_is_remembered_so_the_next_run_starts_postgresql_before_collection(
    pytester: pytest.Pytester,
) -> None:
    # The process backend: no option names the family (a PostgreSQL URL would).
    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    pg_backend_args = ["--dbleak-backend=process"]
    pytester.makepyfile(test_pg=PG_PREAMBLE + LEAK_KINDS)
    with_cache = only_dbleak_and("cacheprovider")
    first = run(pytester, pg_backend_args, "-k", "clean", plugins=with_cache)
    first.assert_outcomes(passed=len(LEAKY))
    # Started after collection: its line follows "collected".
    first.stdout.fnmatch_lines(["collected *", "dbleak: * backend, server PostgreSQL * at *"])

    second = run(pytester, pg_backend_args, "-k", "clean", plugins=with_cache)
    second.assert_outcomes(passed=len(LEAKY))
    # Remembered: started with the session, named in pytest's header.
    second.stdout.fnmatch_lines(["dbleak: * backend, server PostgreSQL * at *", "collected *"])


def test_a_session_requesting_both_families_is_one_line_naming_a_test_of_each(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_mixed="""
        def test_mysql(dbleak_mysql_url):
            pass

        def test_pg(dbleak_postgresql_url):
            pass
        """
    )
    result = run(pytester, [])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: dbleak: one session checks one server family, and these tests request "
            "both (test_mixed.py::test_mysql uses MySQL; test_mixed.py::test_pg uses "
            "PostgreSQL): run them in separate sessions (paths, -k or -m)"
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_family_setting_that_excludes_the_tests_fixtures_is_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_pg="def test_pg(dbleak_postgresql_url):\n    pass\n")
    result = run(pytester, ["--dbleak-family=mysql"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: dbleak: --dbleak-family is mysql, but test_pg.py::test_pg requests a "
            "PostgreSQL fixture"
        ]
    )


LOCKED = """
@pytest.fixture(scope="module")
def table(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id INT PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO items VALUES (1)"))
    yield engine
    with engine.begin() as conn:  # waits for the leaked transaction's lock
        conn.execute(sa.text("DROP TABLE items"))
    engine.dispose()


def test_leaky_holds_a_row_lock(table, dbleak_postgresql_database):
    conn = psycopg.connect(**dbleak_postgresql_database.connect_kwargs())  # LEAK-lock
    conn.execute("UPDATE items SET id = 1 WHERE id = 1")
    KEEP.append(conn)
"""


def test_a_teardown_stuck_behind_a_leaked_postgresql_transaction_does_not_hang_the_run(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    pytester.makepyfile(test_lock=PG_PREAMBLE + LOCKED)
    result = run(pytester, pg_backend_args, "--dbleak-lock-wait=1", "--no-dbleak-reclaim")

    result.assert_outcomes(failed=1)
    line = line_of(PG_PREAMBLE + LOCKED, "# LEAK-lock")
    block = failure_of(result, "test_leaky_holds_a_row_lock")
    assert block.lines[1] == (
        f"dbleak: 1 connection leaked (1 server_connection, lock_wait) at test_lock.py:{line}"
    ), block.str()
    block.fnmatch_lines(["statement stuck behind a lock *: ended server connection * DROP TABLE*"])
    result.stdout.fnmatch_lines(
        ["*dbleak: stuck behind a leak*", "dbleak: ended server connection*"]
    )


def test_a_wrongly_remembered_family_is_replaced_before_the_first_test(
    pytester: pytest.Pytester,
) -> None:
    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    pytester.makepyfile(test_pg=PG_PREAMBLE + LEAK_KINDS)
    pytester.makeconftest(
        """
        SERVERS = []

        def pytest_dbleak_server(config, server):
            SERVERS.append(server.version)

        def pytest_unconfigure(config):
            print("announced:", SERVERS)
        """
    )
    remembered = pytester.path / ".pytest_cache" / "v" / "dbleak" / "family"
    remembered.parent.mkdir(parents=True)
    remembered.write_text('"mysql"')  # as a run of another suite in this folder left it
    result = run(
        pytester,
        ["--dbleak-backend=process"],
        "-s",
        "-k",
        "clean",
        plugins=only_dbleak_and("cacheprovider"),
    )
    result.assert_outcomes(passed=len(LEAKY))
    # pytest's header named the predicted server; the one the tests need follows it.
    result.stdout.fnmatch_lines(
        [
            "dbleak: process backend, server *",
            "collected *",
            "dbleak: process backend, server PostgreSQL * at *",
        ]
    )
    announced = [line for line in result.stdout.lines if line.startswith("announced:")]
    assert len(announced) == 1, announced
    assert announced[0].startswith("announced: ['PostgreSQL "), announced  # only that one
    assert remembered.read_text() == '"postgresql"'


def test_postgresql_verdicts_hold_for_every_distribution_last_failed_and_random_order(
    pytester: pytest.Pytester, pg_backend_args: list[str]
) -> None:
    pytester.makepyfile(test_pg=PG_PREAMBLE + LEAK_KINDS)
    run(pytester, pg_backend_args, "--dbleak-report=full.json")
    full = verdicts(pytester.path / "full.json")
    for dist in ("loadscope", "loadfile", "worksteal"):
        run(
            pytester,
            pg_backend_args,
            "-n",
            "2",
            "--dist",
            dist,
            f"--dbleak-report={dist}.json",
            plugins=only_dbleak_and("xdist"),
        )
        assert verdicts(pytester.path / f"{dist}.json") == full, dist

    with_cache = only_dbleak_and("cacheprovider")
    run(pytester, pg_backend_args, plugins=with_cache)
    run(pytester, pg_backend_args, "--lf", "--dbleak-report=lf.json", plugins=with_cache)
    assert verdicts(pytester.path / "lf.json") == {n: k for n, k in full.items() if k}

    if importlib.util.find_spec("pytest_randomly") is not None:
        for seed in (1, 2):
            run(
                pytester,
                pg_backend_args,
                "-p",
                "randomly",
                f"--randomly-seed={seed}",
                f"--dbleak-report=r{seed}.json",
                plugins=only_dbleak_and("randomly"),
            )
            assert verdicts(pytester.path / f"r{seed}.json") == full, seed
