"""The tracker proves at start that it sees what it relies on: when a SQLAlchemy internal
is missing or behaves differently, the run stops with one line naming the versions
(exit 4), never a gate that passes everything because it detects nothing.

Each case changes SQLAlchemy in the inner run's conftest the way a new version could.
"""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, all_output

A_TEST = """
def test_anything(dbleak_mysql_url):
    pass
"""

SABOTAGE = {
    "a pool class with its own __new__": (
        """
import sqlalchemy.pool

sqlalchemy.pool.Pool.__new__ = staticmethod(lambda cls, *a, **k: object.__new__(cls))
""",
        "Pool defines its own __new__",
    ),
    "a Pool.recreate that no longer hands its dispatch on": (
        """
from sqlalchemy.pool import QueuePool

recreate = QueuePool.recreate


def without_dispatch(self):
    new = recreate(self)
    new.__dict__.pop("dispatch", None)
    return type(self)(self._creator, pool_size=self._pool.maxsize, dialect=self._dialect)


QueuePool.recreate = without_dispatch
""",
        "Pool.recreate() no longer names the pool it replaces",
    ),
    "a pool without the reset_on_return setting": (
        """
from sqlalchemy.pool import Pool

init = Pool.__init__


def __init__(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self._reset_style = self.__dict__.pop("_reset_on_return")


Pool.__init__ = __init__
""",
        # SQLAlchemy's own check-in reads the setting: it fails, and no checkin arrives.
        "the checkin event on the Pool class no longer arrives",
    ),
}


@pytest.mark.parametrize("case", SABOTAGE)
def test_a_sqlalchemy_that_behaves_differently_stops_the_run_with_one_line_naming_versions(
    pytester: pytest.Pytester, case: str
) -> None:
    conftest, what = SABOTAGE[case]
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_one=A_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR, all_output(result)
    line = next(
        (ln for ln in result.stderr.lines if "pytest-dbleak cannot watch SQLAlchemy" in ln), None
    )
    assert line is not None, all_output(result)
    assert line.startswith("ERROR: dbleak: pytest-dbleak cannot watch SQLAlchemy 2."), line
    assert what in line
    assert line.endswith("(checked on SQLAlchemy 2.0.58 and 2.1.9)"), line
    assert "Traceback" not in all_output(result)


def test_the_unchanged_sqlalchemy_passes_the_proof_and_checks_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_one=A_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*dbleak: no leaks in 1 checked test*"])
