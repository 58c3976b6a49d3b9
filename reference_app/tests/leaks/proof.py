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
import textwrap
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENV_VAR = "REFERENCE_APP_REGRESSIONS"
STRESS_MARKERS = ("dbleak_http_load", "dbleak_jobs", "dbleak_socket_churn")
SUPPORT = HERE.parent  # reference_app/tests: where regressions.py switches the bugs on

# What "the seed" is, for a reader who has not read the project's history.
SEED = (
    'The seed is the document this project grew from ("MySQL connection management '
    'fixes", for a Flask shuttle service); its bugs are the connection leaks that '
    "document set out to fix, which the tests can switch back on one at a time."
)

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
    r"dbleak: (?P<count>\d+) connections? leaked(?: over (?P<runs>\d+) runs?(?: \(1 in \d+\))?)?"
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


def catch(bug: str, test: str, marker: str, backend: str, runs: int | None = None) -> Catch:
    """Run `test` with `bug` switched on; what the detector said about it.

    `runs`: the stress marker's runs, for a leak found in the middle of them (whose
    headline has no rate of its own).
    """
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
        last = (done.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
        return Catch(bug, test, marker, f"NOT caught (exit {done.returncode}: {last})", "", False)
    leaked = found["kinds"]
    over = found["runs"] or runs
    if over:
        leaked += f" over {over} runs"
    return Catch(bug, test, marker, leaked, _site(found["site"] or ""), True)


def _site(site: str) -> str:
    """The site; "injected at" one in the test support, where a bug is switched on."""
    path = Path(site.rpartition(":")[0] or site)
    where = (HERE.parents[2] / path).resolve()  # sites are relative to the project root
    if site and where.is_relative_to(SUPPORT):
        return f"injected at {site}"
    return site


def _runs(item: pytest.Item | None) -> int | None:
    """How many runs the item's stress marker asks for (its requests, clients or runs)."""
    from pytest_dbleak.pytest_layer import marks

    if item is None:
        return None
    for name in STRESS_MARKERS:
        mark = item.get_closest_marker(name)
        if mark is not None:
            value = marks.validate(name, mark.args, mark.kwargs)
            return (
                int(
                    getattr(value, "runs", None)
                    or getattr(value, "requests", None)
                    or getattr(value, "clients", 0)
                )
                or None
            )
    return None


def statement(
    items: Sequence[pytest.Item],
    leaking: int,
    exitstatus: int,
    checked: int,
    server: str,
    width: int = 80,
) -> list[str]:
    """The lines that end the main job, none wider than `width` (the terminal's); the
    bugs are switched on only after a clean run."""
    if leaking:
        return _wrap(
            f"The suite leaks on {server} ({leaking} of {checked} checked tests): "
            "the seed's bugs were not switched on.",
            width,
        )
    if exitstatus != 0:
        return _wrap(
            f"No leaks in {checked} checked tests on {server}, but the run failed "
            f"(exit status {exitstatus}): the seed's bugs were not switched on.",
            width,
        )
    by_id = {item.nodeid.split("leaks/")[-1]: item for item in items}
    backend = server.split(" ")[0]
    started = time.monotonic()
    # At once: the children mostly wait (on a pool timeout, on clients leaving), each on
    # its own server; one after another they take several times as long.
    with ThreadPoolExecutor(max_workers=len(CATCHERS)) as pool:
        catches = list(
            pool.map(
                lambda case: catch(
                    case[0],
                    case[1],
                    _marker(by_id.get(case[1])),
                    backend,
                    _runs(by_id.get(case[1])),
                ),
                CATCHERS.items(),
            )
        )
    caught = sum(c.caught for c in catches)
    lines = [
        *_wrap(
            f"The leak-regression suite is clean: {checked} checked tests, no leaks ({server}).",
            width,
        ),
        *_wrap(SEED, width),
        *_wrap(
            f"Each of the seed's {len(catches)} bugs, switched on alone ({ENV_VAR}=<bug>), "
            f"is caught by a named test: {caught} of {len(catches)} "
            f"({time.monotonic() - started:.0f} s):",
            width,
        ),
        "",
    ]
    lines += fitted_table(
        ("bug", "marker", "leaked", "site", "caught by"),
        [(c.bug, c.marker, c.leaked, c.site, c.test) for c in catches],
        width,
    )
    return lines


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        width=max(width, 40),
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )


def fitted_table(head: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """A table when it fits in `width` columns; else one block per row, its cells one
    labelled line each (wrapped), so that nothing runs past the terminal's edge."""
    table = _table(head, rows)
    if max(len(line) for line in table) <= width:
        return table
    label = max(len(h) for h in head[1:]) + 2
    lines: list[str] = []
    for row in rows:
        lines += _wrap(row[0], width, "  ")
        for name, cell in zip(head[1:], row[1:], strict=True):
            first = f"    {name.ljust(label)}"
            lines += textwrap.wrap(
                cell or "-",
                width=max(width, 40),
                initial_indent=first,
                subsequent_indent=" " * len(first),
                break_on_hyphens=False,
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
