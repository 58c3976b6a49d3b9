"""The main job as a newcomer sees it in a 100-column terminal (issue 23): no warning
before the first result, and a closing statement that fits the width, says what the
seed is, gives every bug a rate, and says "injected at" where a bug lives in test support.

One real run of ``pytest --dbleak reference_app/tests/leaks`` with every installed plugin
loaded, as the README's command runs it (about two minutes here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reference_app.tests.leaks import proof
from tests.acceptance.helpers import BEHAVIOUR_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 100


@pytest.fixture(scope="module")
def main_job() -> list[str]:
    # Not an xdist worker's environment either, when the outer run is one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in BEHAVIOUR_SETTINGS and not k.startswith("PYTEST_XDIST_")
    }
    env.pop("PYTEST_ADDOPTS", None)
    env.update(COLUMNS=str(WIDTH), PY_COLORS="0")
    env.pop("CI", None)  # pytest does not truncate under CI: a newcomer's terminal does
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--dbleak", "reference_app/tests/leaks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines() + done.stderr.splitlines()


def test_no_warning_comes_before_the_first_result(main_job: list[str]) -> None:
    first = next(i for i, line in enumerate(main_job) if re.match(r"^reference_app/\S+ [.]", line))
    before = "\n".join(main_job[:first])
    assert "Warning" not in before, before
    assert not any("warnings summary" in line for line in main_job), "\n".join(main_job)


def test_the_closing_statement_fits_a_100_column_terminal(main_job: list[str]) -> None:
    start = next(i for i, line in enumerate(main_job) if "what this run showed" in line)
    summary = main_job[start:]
    too_wide = [line for line in summary if len(line) > WIDTH]
    assert not too_wide, "\n".join(summary)


def test_the_statement_says_what_the_seed_is_and_gives_every_bug_a_rate_and_a_site(
    main_job: list[str],
) -> None:
    start = next(i for i, line in enumerate(main_job) if "what this run showed" in line)
    text = "\n".join(main_job[start:])
    assert " ".join(proof.SEED.split()) in " ".join(text.split())
    assert "is caught by a named test: 5 of 5" in " ".join(text.split())
    leaked = [line for line in main_job[start:] if line.lstrip().startswith("leaked ")]
    assert len(leaked) == len(proof.CATCHERS), text
    assert all(re.search(r" over \d+ runs$", line) for line in leaked), text
    sites = [line.split("site", 1)[1].strip() for line in main_job[start:] if " site " in line]
    assert len(sites) == len(proof.CATCHERS), text
    for site in sites:
        in_support = site.removeprefix("injected at ").startswith("reference_app/tests/")
        assert site.startswith("injected at ") == in_support, site
