"""No orphans on any backend: a pytest killed (SIGKILL), interrupted (Ctrl-C) or cancelled
(SIGTERM) mid-test leaves no container behind, and nothing on a url backend's server that
a later run does not remove - without touching a live concurrent session's database.

(The process backend's kills are in test_trust.py.) Each inner pytest is real and is
killed for real; the outer test waits for what it checks with a bounded poll.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_dbleak.families.mysql.containers import LABEL
from pytest_dbleak.families.mysql.family import parse_mysql_url
from tests.acceptance.helpers import ONLY_DBLEAK

WAIT_TO_BE_KILLED = """
import json, os, time
import sqlalchemy as sa


def test_waits_to_be_killed(dbleak_server, dbleak_mysql_url):
    u = sa.engine.make_url(dbleak_mysql_url)
    target = os.environ["DBLEAK_TEST_HANDSHAKE"]
    with open(target + ".tmp", "w") as f:
        json.dump({"port": dbleak_server.port, "db": u.database, "user": u.username}, f)
    os.replace(target + ".tmp", target)
    time.sleep(300)  # until the outer test kills this run
"""


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class InnerRun:
    """A pytest --dbleak subprocess that is inside its one test."""

    def __init__(
        self, directory: Path, name: str, *args: str, module: str = WAIT_TO_BE_KILLED
    ) -> None:
        directory.mkdir(exist_ok=True)
        (directory / "test_wait.py").write_text(module)
        handshake = directory / "handshake.json"
        env = dict(os.environ, DBLEAK_TEST_HANDSHAKE=str(handshake))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *ONLY_DBLEAK, "--dbleak", *args, "test_wait.py"],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for(
                lambda: handshake.exists() or self.proc.poll() is not None,
                120,
                f"the inner test of {name} to start",
            )
            assert self.proc.poll() is None, f"the inner run {name} ended early"
        except BaseException:
            self.end()
            raise
        self.seen = json.loads(handshake.read_text())

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=120)

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- docker ------------------------------------------------------------------------------
def _our_containers(pid: int) -> list[str]:
    """Names of the containers (running or not) that the pytest with `pid` started."""
    import docker

    client = docker.from_env(timeout=30)
    try:  # the low-level list: no per-container inspect that a removal could race
        found = client.api.containers(all=True, filters={"label": f"{LABEL}={pid}"})
        return [name for c in found for name in c["Names"]]
    finally:
        client.close()


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGKILL, "SIGKILL"), (signal.SIGINT, "Ctrl-C")])
def test_a_killed_or_interrupted_pytest_leaves_no_container_behind(
    pytester: pytest.Pytester,
    docker_test_image: str,
    monkeypatch: pytest.MonkeyPatch,
    sig: int,
    how: str,
) -> None:
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")  # the plugin's reaper alone
    inner = InnerRun(
        pytester.path / "run", how, "--dbleak-backend=docker", f"--dbleak-image={docker_test_image}"
    )
    try:
        assert _our_containers(inner.proc.pid), "the inner run's container is not there"
        inner.kill(sig)
        _wait_for(
            lambda: not _our_containers(inner.proc.pid), 60, f"the container to go after {how}"
        )
    finally:
        inner.end()


# -- url ---------------------------------------------------------------------------------
def _objects_of(admin_url: str, name: str) -> tuple[bool, bool]:
    """(the database exists, the user exists) on the url backend's server."""
    conn = parse_mysql_url(admin_url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (name,))
            database = bool(cur.fetchall())
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (name,))
            user = cur.fetchone()[0] > 0
        return database, user
    finally:
        conn.close()


@pytest.fixture
def live_url_session(pytester: pytest.Pytester, local_mysql_url: str) -> Iterator[InnerRun]:
    """A url-backend session that stays inside its test while another run is killed."""
    inner = InnerRun(
        pytester.path / "live",
        "the live session",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={local_mysql_url}",
    )
    try:
        yield inner
    finally:
        inner.end()


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")])
def test_a_killed_url_run_leaves_nothing_after_the_next_run_and_a_live_session_keeps_its_own(
    pytester: pytest.Pytester,
    local_mysql_url: str,
    live_url_session: InnerRun,
    sig: int,
    how: str,
) -> None:
    url_args = ("--dbleak-backend=url", f"--dbleak-mysql-url={local_mysql_url}")
    killed = InnerRun(pytester.path / "killed", how, *url_args)
    try:
        name = killed.seen["db"]
        assert _objects_of(local_mysql_url, name) == (True, True)
        killed.kill(sig)
        if sig == signal.SIGTERM:  # handled like Ctrl-C: the run drops its own at once
            assert _objects_of(local_mysql_url, name) == (False, False)
        else:  # nothing ran in the killed process: the next run's sweep must do it
            assert _objects_of(local_mysql_url, name) == (True, True)
    finally:
        killed.end()

    pytester.makepyfile(test_next="def test_next(dbleak_mysql_url):\n    pass\n")
    next_run = pytester.runpytest_subprocess("--dbleak", *url_args, *ONLY_DBLEAK, "test_next.py")
    next_run.assert_outcomes(passed=1)

    assert _objects_of(local_mysql_url, name) == (False, False), f"{name} was left"
    live = live_url_session.seen["db"]
    assert _objects_of(local_mysql_url, live) == (True, True), "the live session lost its own"
    live_url_session.kill(signal.SIGTERM)
    assert _objects_of(local_mysql_url, live) == (False, False)


@pytest.fixture
def look_alikes(local_mysql_url: str) -> Iterator[tuple[str, str]]:
    """Objects named like a session's that are not: a lone administrator (as
    test_trust.py makes), and a database whose same-named user holds more than it."""
    admin, other = (f"dbleak_{tag}_{secrets.token_hex(3)}" for tag in ("t", "z"))
    conn = parse_mysql_url(local_mysql_url).connect()
    try:
        with conn.cursor() as cur:
            for user in (admin, other):
                cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", ("pw",))
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'")
            cur.execute(f"CREATE DATABASE `{other}`")
        yield admin, other
    finally:
        with conn.cursor() as cur:
            for user in (admin, other):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP DATABASE IF EXISTS `{other}`")
        conn.close()


def test_the_sweep_leaves_objects_that_only_look_like_a_sessions(
    pytester: pytest.Pytester, local_mysql_url: str, look_alikes: tuple[str, str]
) -> None:
    admin, other = look_alikes
    pytester.makepyfile(test_next="def test_next(dbleak_mysql_url):\n    pass\n")
    pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={local_mysql_url}",
        *ONLY_DBLEAK,
    ).assert_outcomes(passed=1)
    assert _objects_of(local_mysql_url, admin) == (False, True)
    assert _objects_of(local_mysql_url, other) == (True, True)
