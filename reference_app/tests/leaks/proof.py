"""What the main job showed, stated at its end (issue 13).

``pytest --dbleak reference_app/tests/leaks`` ends with a short statement: the suite
is clean here, and each of the seed's bugs, switched on alone, is caught by a named
test. The second half is not taken on trust: after a clean run of the whole suite,
each bug's catching test runs again in a child pytest with the bug switched on
(``REFERENCE_APP_REGRESSIONS=<bug>``), and the table shows what the detector said
there - the marker, the leaked kind and count, and the site.

Only for the main job itself (this folder, the whole of it, under ``--dbleak``): the
project's full run and a selection of tests are not slowed down by it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENV_VAR = "REFERENCE_APP_REGRESSIONS"
STRESS_MARKERS = ("dbleak_http_load", "dbleak_jobs", "dbleak_socket_churn")

# bug -> the test of this suite that catches it
CATCHERS: dict[str, str] = {
    "no_request_cleanup": "test_http_load.py::test_the_seeds_load_on_locations_two_rounds",
    "job_without_app_context": "test_jobs_stress.py::test_cleanup_old_logs_under_stress",
    "job_create_app_per_run": "test_jobs_stress.py::test_cleanup_old_logs_under_stress",
    "disconnect_thread_without_cleanup": (
        "test_socket_churn.py::test_a_hundred_drivers_come_and_go"
    ),
    "long_running_job_session": (
        "test_jobs_stress.py::test_retry_failed_notifications_under_stress"
    ),
}

# "dbleak: 60 connections leaked over 1000 runs (1 in 17) (60 checked_out) at app.py:12"
_HEADLINE = re.compile(
    r"dbleak: (?P<count>\d+) connections? leaked(?: over (?P<runs>\d+) runs? \([^()]*\))?"
    r"(?:, \d+ allowed)? \((?P<kinds>[^()]*)\)(?: at (?P<site>\S+))?"
)


@dataclass(frozen=True)
class Catch:
    bug: str
    test: str
    marker: str
    leaked: str  # "60 checked_out over 1000 runs", or why it was not caught
    site: str
    caught: bool


def is_main_job(config: pytest.Config, items: Sequence[pytest.Item]) -> bool:
    """This folder, whole: no other path, no -k or -m selection, every test collected."""
    args = [Path(a.split("::")[0]).resolve() for a in config.args]
    whole = args == [HERE] and not config.option.keyword and not config.option.markexpr
    return whole and bool(items) and not hasattr(config, "workerinput")


def catch(bug: str, test: str, marker: str, backend: str) -> Catch:
    """Run `test` with `bug` switched on; what the detector said about it."""
    env = {**os.environ, ENV_VAR: bug, "PY_COLORS": "0"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / test),
            "--dbleak",
            f"--dbleak-backend={backend}",
            "--dbleak-settle-timeout=0.3",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    found = _HEADLINE.search(done.stdout)
    if done.returncode not in (1, 6) or found is None:
        return Catch(bug, test, marker, f"NOT caught (exit {done.returncode})", "", False)
    leaked = found["kinds"]
    if found["runs"]:
        leaked += f" over {found['runs']} runs"
    return Catch(bug, test, marker, leaked, found["site"] or "", True)


def statement(
    config: pytest.Config, items: Sequence[pytest.Item], clean: bool, checked: int, server: str
) -> list[str]:
    """The lines that end the main job."""
    if not clean:
        return [f"The suite is not clean on {server}: the bugs were not switched on."]
    by_id = {item.nodeid.split("leaks/")[-1]: item for item in items}
    backend = server.split(" ")[0]
    started = time.monotonic()
    # At once: the children mostly wait (on a pool timeout, on clients leaving), each on
    # its own server; one after another they take several times as long.
    with ThreadPoolExecutor(max_workers=len(CATCHERS)) as pool:
        catches = list(
            pool.map(
                lambda case: catch(case[0], case[1], _marker(by_id.get(case[1])), backend),
                CATCHERS.items(),
            )
        )
    caught = sum(c.caught for c in catches)
    lines = [
        f"The leak-regression suite is clean: {checked} checked tests, no leaks ({server}).",
        f"Each of the seed's {len(catches)} bugs, switched on alone ({ENV_VAR}=<bug>), "
        f"is caught by a named test: {caught} of {len(catches)} "
        f"({time.monotonic() - started:.0f} s):",
        "",
    ]
    lines += _table(
        ("bug", "marker", "leaked", "site", "caught by"),
        [(c.bug, c.marker, c.leaked, c.site, c.test) for c in catches],
    )
    return lines


def _marker(item: pytest.Item | None) -> str:
    if item is None:
        return "?"
    return next((m for m in STRESS_MARKERS if item.get_closest_marker(m)), "-")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    cells = [list(head), *map(list, rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
