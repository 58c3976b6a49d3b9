"""``--dbleak-reuse`` on PostgreSQL's process backend: the server outlives the session and
the next session uses it, with its own database and role, and the same verdicts as a
fresh server.

Each test gets its own cache folder (a copy of the real PostgreSQL template, so no initdb
runs), so its reused server is its own, and stops it at the end: nothing may be left
running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, TEMPLATE_CACHE
from tests.acceptance.test_reuse import _alive, verdicts, wait_until_gone

pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from pytest_dbleak.families.postgresql.embedded import find_postgres

SCENARIOS = """\
import psycopg
import pytest
import sqlalchemy as sa

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends


@pytest.fixture(scope="module")
def engine(dbleak_postgresql_url):
    engine = sa.create_engine(dbleak_postgresql_url, pool_reset_on_return=None)
    yield engine
    engine.dispose()


def test_clean(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_checkout_left_open(engine):
    KEEP.append(engine.connect())


def test_raw_connection_left_open(dbleak_postgresql_database):
    KEEP.append(psycopg.connect(**dbleak_postgresql_database.connect_kwargs()))


def test_transaction_left_open(engine):
    conn = engine.connect()
    conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (id INT)"))
    conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    KEEP.append(conn)


def test_clean_raw(dbleak_postgresql_database):
    psycopg.connect(**dbleak_postgresql_database.connect_kwargs()).close()


def test_port(dbleak_postgresql_server):
    print("PORT", dbleak_postgresql_server.port)
"""

LEAKY = [
    "FAILED test_scenarios.py::test_checkout_left_open",
    "FAILED test_scenarios.py::test_raw_connection_left_open",
    "FAILED test_scenarios.py::test_transaction_left_open",
]


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    """No process of the server's group is left (postgres's children die with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Reused:
    """One test's cache folder and what its reused server left there."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.seen: list[dict[str, Any]] = []  # states replaced since: checked at the end

    def paths(self) -> list[Path]:
        return sorted(self.cache.glob("reuse-pg-*.json"))

    def state(self) -> dict[str, Any]:
        [path] = self.paths()
        return dict(json.loads(path.read_text()))

    def stop(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest_dbleak", "stop", f"--cache-dir={self.cache}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reused]:
    if find_postgres(None) is None:
        pytest.skip("no postgres binary on PATH or in /usr/lib/postgresql/*/bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    for template in Path(TEMPLATE_CACHE).glob("pg-template-*"):
        if (template / "READY").exists():
            shutil.copytree(template, cache / template.name, symlinks=True)
    monkeypatch.setenv("DBLEAK_CACHE_DIR", str(cache))
    handle = Reused(cache)
    yield handle
    states = [json.loads(p.read_text()) for p in handle.paths()]
    handle.stop()
    for state in [*states, *handle.seen]:
        assert wait_until_gone(state["watcher"]), "the watcher outlived stop"
        assert wait_until_gone(state["server"]), "the server outlived stop"
        assert _group_gone(state["server"]), "a postgres child outlived stop"
        assert not Path(state["root"]).exists()
    assert not handle.paths()


def run(pytester: pytest.Pytester, cache: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *ONLY_DBLEAK,
        "--dbleak",
        FAST,
        "--dbleak-backend=process",
        f"--dbleak-cache-dir={cache}",
        "-s",
        *args,
    )


def port_of(result: pytest.RunResult) -> int:
    [port] = re.findall(r"PORT (\d+)", result.stdout.str())
    return int(port)


def test_two_sessions_in_a_row_share_one_server_and_judge_as_a_fresh_server_does(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    fresh = run(pytester, reused.cache)
    assert not reused.paths()  # without the option nothing stays

    first = run(pytester, reused.cache, "--dbleak-reuse")
    first.stdout.fnmatch_lines(["dbleak: started a server that stays up*"])
    assert "not for PostgreSQL yet" not in first.stdout.str()
    state = reused.state()
    assert not any(reused.cache.glob("reuse-[!p]*"))  # PostgreSQL's key, not MySQL's
    assert os.stat(reused.paths()[0]).st_mode & 0o777 == 0o600
    assert state["password"] not in first.stdout.str()
    assert port_of(first) == state["port"]

    second = run(pytester, reused.cache, "--dbleak-reuse")
    second.stdout.fnmatch_lines(["dbleak: reusing the server started * s ago*"])
    assert reused.state() == state  # same watcher, server, port and password
    assert port_of(second) == state["port"]
    assert _listening(state["port"])

    assert verdicts(fresh) == verdicts(first) == verdicts(second) == (6, LEAKY)
    admin = _admin(state)
    try:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dbleak\\_%'"
        ).fetchall()
        assert rows == []  # each session dropped its own database
    finally:
        admin.close()


def _admin(state: dict[str, Any]) -> Any:
    import psycopg

    return psycopg.connect(
        host=state["socket"],
        port=state["port"],
        user="dbleak_admin",
        dbname="postgres",
        autocommit=True,
    )


def test_a_killed_server_is_replaced(pytester: pytest.Pytester, reused: Reused) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    first = run(pytester, reused.cache, "--dbleak-reuse")
    old = reused.state()
    reused.seen.append(old)
    os.kill(old["server"], signal.SIGKILL)
    assert wait_until_gone(old["server"])

    second = run(pytester, reused.cache, "--dbleak-reuse")
    second.stdout.fnmatch_lines(["dbleak: started a server that stays up*"])
    new = reused.state()
    assert new["server"] != old["server"]
    assert port_of(second) == new["port"]
    assert verdicts(second) == verdicts(first) == (6, LEAKY)
    assert wait_until_gone(old["watcher"])  # the old watcher cleaned up and left
    assert _group_gone(old["server"])  # and no child of the old server is left
    assert not Path(old["root"]).exists()


def test_stop_stops_the_server_and_leaves_nothing_running(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    run(pytester, reused.cache, "--dbleak-reuse", "-k", "clean").assert_outcomes(passed=2)
    state = reused.state()
    assert _listening(state["port"])
    stopped = reused.stop()
    assert stopped.returncode == 0
    assert f"dbleak: stopped the server at 127.0.0.1:{state['port']}" in stopped.stdout
    assert not _alive(state["watcher"])
    assert not _alive(state["server"])
    assert _group_gone(state["server"])
    assert not _listening(state["port"])
    assert not Path(state["root"]).exists()
    assert not reused.paths()
    again = reused.stop()
    assert again.returncode == 0
    assert "no reused server is running" in again.stdout


def test_the_server_stops_itself_after_the_idle_time(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    # The test copies the state while its session holds the server: after the session
    # a one-second idle time may already have run out.
    pytester.makepyfile(
        test_copy="""
import glob, os, shutil

def test_copy_state(dbleak_postgresql_url):
    [state] = glob.glob(os.path.join(os.environ["DBLEAK_CACHE_DIR"], "reuse-pg-*.json"))
    shutil.copy(state, "state.json")
"""
    )
    run(pytester, reused.cache, "--dbleak-reuse", "--dbleak-reuse-idle=1").assert_outcomes(passed=1)
    state = json.loads((pytester.path / "state.json").read_text())
    assert wait_until_gone(state["watcher"])
    assert not _alive(state["server"])
    assert _group_gone(state["server"])
    assert not Path(state["root"]).exists()
    assert not reused.paths()
