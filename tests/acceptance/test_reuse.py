"""``--dbleak-reuse``: the process backend's server outlives the session and the next
session uses it, with its own database and user, and the same verdicts as a fresh server.

Each test gets its own cache folder (a copy of the real template), so its reused server
is its own, and stops it at the end: nothing may be left running.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.helpers import FAST, MODULE_ENGINE, ONLY_DBLEAK, PREAMBLE, TEMPLATE_CACHE

SCENARIOS = (
    PREAMBLE
    + MODULE_ENGINE
    + """

def test_clean(engine):
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def test_checkout_left_open(engine):
    KEEP.append(engine.connect())


def test_raw_connection_left_open(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))


def test_transaction_left_open(engine):
    conn = engine.connect()
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (id INT)")
    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    KEEP.append(conn)


def test_clean_raw(dbleak_mysql_url):
    pymysql.connect(**connect_args(dbleak_mysql_url)).close()
"""
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def wait_until_gone(pid: int, timeout: float = 60) -> bool:
    """Wait for another process's exit: not our child, so its pidfd is the event."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return not _alive(pid)


class Reused:
    """One test's cache folder and what its reused server left there."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def state(self) -> dict[str, Any]:
        [path] = self.cache.glob("reuse-*.json")
        return dict(json.loads(path.read_text()))

    def has_state(self) -> bool:
        return any(self.cache.glob("reuse-*.json"))

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
    cache = tmp_path / "cache"
    cache.mkdir()
    for template in Path(TEMPLATE_CACHE).glob("template-*"):
        if (template / "READY").exists():
            shutil.copytree(template, cache / template.name)
    monkeypatch.setenv("DBLEAK_CACHE_DIR", str(cache))
    handle = Reused(cache)
    yield handle
    states = [json.loads(p.read_text()) for p in cache.glob("reuse-*.json")]
    handle.stop()
    for state in states:
        assert wait_until_gone(state["watcher"]), "the watcher outlived stop"
        assert wait_until_gone(state["server"]), "the server outlived stop"
        assert not Path(state["root"]).exists()


def verdicts(result: pytest.RunResult) -> tuple[int, list[str]]:
    failed = sorted(
        re.sub(r" - dbleak.*", "", line)
        for line in result.stdout.lines
        if line.startswith("FAILED ")
    )
    return result.ret, failed


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*ONLY_DBLEAK, "--dbleak", FAST, *args)


def test_two_sessions_in_a_row_share_one_server_and_judge_as_a_fresh_server_does(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    fresh = run(pytester)
    assert not reused.has_state()  # without the option nothing stays

    first = run(pytester, "--dbleak-reuse")
    first.stdout.fnmatch_lines(["dbleak: started a server that stays up*"])
    state = reused.state()
    assert os.stat(next(reused.cache.glob("reuse-*.json"))).st_mode & 0o777 == 0o600
    assert state["password"] not in first.stdout.str()

    second = run(pytester, "--dbleak-reuse")
    second.stdout.fnmatch_lines(["dbleak: reusing the server started * s ago*"])
    assert reused.state() == state  # same watcher, server, port and password
    assert f"127.0.0.1:{state['port']}" in second.stdout.str()

    assert verdicts(fresh) == verdicts(first) == verdicts(second)
    assert verdicts(fresh) == (
        6,
        [
            "FAILED test_scenarios.py::test_checkout_left_open",
            "FAILED test_scenarios.py::test_raw_connection_left_open",
            "FAILED test_scenarios.py::test_transaction_left_open",
        ],
    )


def test_xdist_workers_and_a_killed_session_share_the_server_safely(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    first = run(pytester, "--dbleak-reuse")
    state = reused.state()
    workers = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--dbleak", FAST, "--dbleak-reuse", "-n", "2"
    )
    assert verdicts(workers) == verdicts(first)
    assert reused.state() == state

    # A session killed mid-run leaves its database; the next one sweeps it.
    pytester.makepyfile(
        test_hang="import time\n\ndef test_hang(dbleak_mysql_url):\n"
        "    print('INSIDE', flush=True)\n    time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    hung = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            *ONLY_DBLEAK,
            "--dbleak",
            "--dbleak-reuse",
            "-s",
            "test_hang.py",
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hung.stdout is not None
    for line in hung.stdout:
        if "INSIDE" in line:  # pytest is inside the test: its database exists
            break
    hung.kill()
    hung.wait()
    hung.stdout.close()
    after = run(pytester, "--dbleak-reuse", "test_scenarios.py")
    assert verdicts(after) == verdicts(first)
    assert reused.state() == state
    admin = _admin(state)
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'dbleak\\_%'")
            assert cur.fetchall() == ()  # the killed one swept, the finished ones dropped
    finally:
        admin.close()


def _admin(state: dict[str, Any]) -> Any:
    import pymysql

    return pymysql.connect(
        unix_socket=state["socket"], user="dbleak_admin", password=state["password"]
    )


def test_a_killed_server_is_replaced(pytester: pytest.Pytester, reused: Reused) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    first = run(pytester, "--dbleak-reuse")
    old = reused.state()
    os.kill(old["server"], signal.SIGKILL)
    assert wait_until_gone(old["server"])

    second = run(pytester, "--dbleak-reuse")
    second.stdout.fnmatch_lines(["dbleak: started a server that stays up*"])
    new = reused.state()
    assert new["server"] != old["server"]
    assert verdicts(second) == verdicts(first)
    assert wait_until_gone(old["watcher"])  # the old watcher cleaned up and left
    assert not Path(old["root"]).exists()


def test_stop_stops_the_server_and_leaves_nothing_running(
    pytester: pytest.Pytester, reused: Reused
) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    run(pytester, "--dbleak-reuse", "-k", "clean")
    state = reused.state()
    stopped = reused.stop()
    assert stopped.returncode == 0
    assert f"dbleak: stopped the server at 127.0.0.1:{state['port']}" in stopped.stdout
    assert not _alive(state["watcher"])
    assert not _alive(state["server"])
    assert not Path(state["root"]).exists()
    assert not reused.has_state()
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

def test_copy_state(dbleak_mysql_url):
    [state] = glob.glob(os.path.join(os.environ["DBLEAK_CACHE_DIR"], "reuse-*.json"))
    shutil.copy(state, "state.json")
"""
    )
    run(pytester, "--dbleak-reuse", "--dbleak-reuse-idle=1").assert_outcomes(passed=1)
    state = json.loads((pytester.path / "state.json").read_text())
    assert wait_until_gone(state["watcher"])
    assert not _alive(state["server"])
    assert not Path(state["root"]).exists()
    assert not reused.has_state()
