"""Helpers for the acceptance suite: each test writes a small test module and runs
``pytest --dbleak`` on it in a subprocess, against a real server.

A subprocess, because the plugin patches SQLAlchemy's ``Pool`` class process-wide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from pytest_dbleak.engine.settings import OPTIONS, Settings

# Short re-checks keep leaky runs fast; clean tests must pass even so.
FAST = "--dbleak-settle-timeout=0.2"

# Inner runs load the plugin through its entry point, like a user's run, but not the
# other plugins installed here (importing them costs ~1.5 s per run), nor the cache.
_OTHER_PLUGINS = sorted({ep.name for ep in entry_points(group="pytest11")} - {"dbleak"})
ONLY_DBLEAK: tuple[str, ...] = (
    "-p",
    "no:cacheprovider",
    *(arg for name in _OTHER_PLUGINS for arg in ("-p", f"no:{name}")),
)


def only_dbleak_and(*names: str) -> tuple[str, ...]:
    """ONLY_DBLEAK, with the named plugins (and pytest's cache, if named) left on."""
    blocked = [
        n
        for n in ("cacheprovider", *_OTHER_PLUGINS)
        if not any(n == name or n.startswith(name + ".") for name in names)
    ]
    return tuple(arg for name in blocked for arg in ("-p", f"no:{name}"))


# Pytester points HOME at its temporary directory, which would make every inner run
# initialise a fresh template datadir (~1-3 s). Keep using the real cache.
TEMPLATE_CACHE = str(Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache)

# Settings that describe this machine, not the behaviour under test.
MACHINE_SETTINGS = {"DBLEAK_CACHE_DIR", "DBLEAK_MYSQLD", "DBLEAK_STARTUP_TIMEOUT"}
# Settings an inner run must not inherit from the outer environment.
BEHAVIOUR_SETTINGS = {spec.env for spec in OPTIONS} - MACHINE_SETTINGS

# Put at the top of an inner test module: what every scenario needs.
PREAMBLE = '''\
import gc
import threading

import pymysql
import pytest
import sqlalchemy as sa

KEEP = []  # what a leaky test leaves behind stays referenced until the run ends


def connect_args(url):
    """PyMySQL keyword arguments for the session database of `url`."""
    u = sa.engine.make_url(url)
    return dict(host=u.host, port=u.port, user=u.username, password=u.password,
                database=u.database, ssl_disabled=True)


def in_thread(fn):
    thread = threading.Thread(target=fn, name="worker")
    thread.start()
    thread.join()
'''

# A module-scoped engine on the session database, for scenarios that need one.
MODULE_ENGINE = """

@pytest.fixture(scope="module")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()
"""


def line_of(source: str, marker: str) -> int:
    """The 1-based line of `source` that carries `marker` (a comment like ``# LEAK-1``)."""
    hits = [n for n, line in enumerate(source.splitlines(), 1) if marker in line]
    assert len(hits) == 1, f"{marker!r} must mark exactly one line, found {hits}"
    return hits[0]


def failure_of(result: pytest.RunResult, test_name: str) -> pytest.LineMatcher:
    """The lines of one test's entry in the FAILURES (or ERRORS/PASSES) section."""
    lines = result.stdout.lines
    header = re.compile(rf"^_+ (ERROR at \w+ of )?{re.escape(test_name)} _+$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    assert start is not None, f"no report section for {test_name}:\n" + result.stdout.str()
    end = start + 1
    while end < len(lines) and not re.match(r"^(_{3,} .* _{3,}|={3,}.*)$", lines[end]):
        end += 1
    return pytest.LineMatcher(lines[start:end])


def assert_no_report_for(result: pytest.RunResult, test_name: str) -> None:
    header = re.compile(rf"^_+ (ERROR at \w+ of )?{re.escape(test_name)} _+$")
    assert not any(header.match(line) for line in result.stdout.lines), result.stdout.str()


def all_output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def run_pytest_in(path: Path, *args: str) -> pytest.RunResult:
    """What ``pytester.runpytest_subprocess`` does, for one run that several tests read
    (pytester is function-scoped)."""
    env = {
        k: v for k, v in os.environ.items() if k not in BEHAVIOUR_SETTINGS and k != "PYTEST_ADDOPTS"
    }
    env["PYTEST_ADDOPTS"] = "-p no:randomly"  # as the root conftest sets for pytester
    env.setdefault("DBLEAK_CACHE_DIR", TEMPLATE_CACHE)
    env["PY_COLORS"] = "0"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", f"--basetemp={path / 'basetemp'}", *args],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - start,
    )


def pg_admin_url(server: Any) -> str:
    """The admin URL of a postgres this suite started (``start_postgres``)."""
    ep = server.endpoint
    return f"postgresql://{ep.user}:{ep.password}@127.0.0.1:{ep.port}/postgres"
