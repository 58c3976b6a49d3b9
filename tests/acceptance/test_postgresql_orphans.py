"""No orphans on PostgreSQL: a pytest killed (SIGKILL), interrupted (Ctrl-C) or cancelled
(SIGTERM) inside a test leaves no server and no folder on the process backend, and on a
url backend's server no role or database that the next run does not remove - never a
live concurrent session's.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.helpers import ONLY_DBLEAK, pg_admin_url
from tests.acceptance.test_no_orphans import InnerRun, _wait_for

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

WAIT_TO_BE_KILLED = """
import json, os, time


def test_waits_to_be_killed(dbleak_postgresql_server, dbleak_postgresql_database):
    db = dbleak_postgresql_database
    target = os.environ["DBLEAK_TEST_HANDSHAKE"]
    with open(target + ".tmp", "w") as f:
        json.dump({"port": dbleak_postgresql_server.port,
                   "socket": dbleak_postgresql_server.socket,
                   "db": db.name, "user": db.user}, f)
    os.replace(target + ".tmp", target)
    time.sleep(300)  # until the outer test kills this run
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGKILL, "SIGKILL"), (signal.SIGINT, "Ctrl-C")])
def test_a_killed_or_interrupted_pytest_leaves_no_postgres_and_no_folder(
    pytester: pytest.Pytester, sig: int, how: str
) -> None:
    from pytest_dbleak.families.postgresql.embedded import find_postgres

    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    inner = InnerRun(
        pytester.path / "run", how, "--dbleak-backend=process", module=WAIT_TO_BE_KILLED
    )
    try:
        port, folder = inner.seen["port"], Path(inner.seen["socket"])
        assert _listening(port)
        assert folder.is_dir()
        inner.kill(sig)
        _wait_for(lambda: not _listening(port), 60, f"postgres to stop after {how}")
        _wait_for(lambda: not folder.exists(), 60, f"the server's folder to go after {how}")
    finally:
        inner.end()


def _objects_of(admin_url: str, name: str) -> tuple[bool, bool]:
    """(the database exists, the role exists) on the url backend's server."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        database = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        has_db = database.fetchone() is not None
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        return has_db, role.fetchone() is not None


@pytest.fixture
def live_session(pytester: pytest.Pytester, pg_server: Any) -> Iterator[InnerRun]:
    """A url-backend session that stays inside its test while another run is killed."""
    inner = InnerRun(
        pytester.path / "live",
        "the live session",
        "--dbleak-backend=url",
        f"--dbleak-postgresql-url={pg_admin_url(pg_server)}",
        module=WAIT_TO_BE_KILLED,
    )
    try:
        yield inner
    finally:
        inner.end()


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")])
def test_a_killed_postgresql_url_run_leaves_nothing_after_the_next_run_and_a_live_one_keeps_its_own(
    pytester: pytest.Pytester, pg_server: Any, live_session: InnerRun, sig: int, how: str
) -> None:
    admin = pg_admin_url(pg_server)
    url_args = ("--dbleak-backend=url", f"--dbleak-postgresql-url={admin}")
    killed = InnerRun(pytester.path / "killed", how, *url_args, module=WAIT_TO_BE_KILLED)
    try:
        name = killed.seen["db"]
        assert _objects_of(admin, name) == (True, True)
        killed.kill(sig)
        if sig == signal.SIGTERM:  # handled like Ctrl-C: the run drops its own at once
            assert _objects_of(admin, name) == (False, False)
        else:  # nothing ran in the killed process: the next run's sweep must do it
            assert _objects_of(admin, name) == (True, True)
    finally:
        killed.end()

    pytester.makepyfile(test_next="def test_next(dbleak_postgresql_url):\n    pass\n")
    next_run = pytester.runpytest_subprocess("--dbleak", *url_args, *ONLY_DBLEAK, "test_next.py")
    next_run.assert_outcomes(passed=1)

    assert _objects_of(admin, name) == (False, False), f"{name} was left"
    live = live_session.seen["db"]
    assert _objects_of(admin, live) == (True, True), "the live session lost its own"
    live_session.kill(signal.SIGTERM)
    assert _objects_of(admin, live) == (False, False)
