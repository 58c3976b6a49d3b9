"""One verdict per test, however the suite is run.

Each module below ends with a leaky test whose leak a module- or session-scoped fixture
cleans up. pytest runs that clean-up inside the teardown of the last test of its scope:
alone, last selected, last on an xdist worker. The check's window ends before it, so
every way of running gives each test the verdict of the full serial run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, only_dbleak_and

# Each kind: (what the leaky test does, what the wider fixture's teardown undoes).
KINDS = {
    "checked_out": (
        "HELD.append(engine.connect())",
        "for conn in HELD: conn.close()",
    ),
    "server_connection": (
        "HELD.append(pymysql.connect(**connect_args(dbleak_mysql_url)))",
        "for conn in HELD: conn.close()",
    ),
    # Dropped without close(): the garbage collector gives it back.
    "gc_return": (
        "engine.connect()",
        "engine.dispose()",
    ),
    "undisposed_engine": (
        "ENGINES.append(sa.create_engine(dbleak_mysql_url)); ENGINES[-1].connect().close()",
        "for other in ENGINES: other.dispose()",
    ),
    "open_transaction": (
        # A raw pooled connection: SQLAlchemy's Connection.close() would roll back.
        "raw = lazy.raw_connection(); raw.cursor().execute('SELECT * FROM items'); raw.close()",
        "lazy.dispose()",
    ),
}

MODULE = """
HELD = []
ENGINES = []


@pytest.fixture(scope="{scope}")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="{scope}")
def lazy(dbleak_mysql_url):
    # A pool that does not roll back on return: a transaction can stay open in it.
    engine = sa.create_engine(dbleak_mysql_url, pool_reset_on_return=None)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS items (id INT) ENGINE=InnoDB"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="{scope}", autouse=True)
def clean_up_after_everyone(engine, lazy):
    yield
    {undo}
    HELD.clear()
    ENGINES.clear()


def test_clean_{kind}(engine, lazy, dbleak_mysql_url):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_leaky_{kind}(engine, lazy, dbleak_mysql_url):
    {leak}  # LEAK
"""


def write_corpus(pytester: pytest.Pytester, scope: str) -> list[str]:
    """One module per kind; returns the module names."""
    names = []
    for kind, (leak, undo) in KINDS.items():
        name = f"test_{kind}"
        source = MODULE.format(scope=scope, kind=kind, leak=leak, undo=undo)
        pytester.makepyfile(**{name: PREAMBLE + source})
        names.append(name)
    return names


def verdicts(report: Path) -> dict[str, tuple[str, tuple[tuple[str, int], ...], str | None]]:
    """nodeid -> (outcome, leaked count per kind, the first leak site)."""
    data = json.loads(report.read_text())
    out = {}
    for test in data["tests"]:
        kinds: dict[str, int] = {}
        for leak in test["leaks"]:
            kinds[leak["kind"]] = kinds.get(leak["kind"], 0) + leak["count"]
        site = next((leak["site"] for leak in test["leaks"] if leak["site"]), None)
        where = f"{site['file']}:{site['line']}" if site else None
        out[test["nodeid"]] = (test["outcome"], tuple(sorted(kinds.items())), where)
    return out


def run(
    pytester: pytest.Pytester,
    args: list[str],
    *more: str,
    report: str,
    plugins: tuple[str, ...] = ONLY_DBLEAK,
) -> Path:
    pytester.runpytest_subprocess(
        "--dbleak", *args, FAST, f"--dbleak-report={report}", *plugins, *more
    )
    return pytester.path / report


@pytest.fixture(params=["module", "session"])
def scope(request: pytest.FixtureRequest) -> str:
    return request.param


def test_a_leak_that_a_wider_fixture_cleans_up_fails_its_test_alone_as_in_the_full_run(
    pytester: pytest.Pytester, backend_args: list[str], scope: str
) -> None:
    names = write_corpus(pytester, scope)
    full = verdicts(run(pytester, backend_args, report="full.json"))

    leaky = {n for n in full if "test_leaky_" in n}
    assert {n for n, (outcome, _, _) in full.items() if outcome == "failed"} == leaky
    for nodeid in leaky:
        kind = nodeid.rsplit("test_leaky_", 1)[1]
        _, kinds, site = full[nodeid]
        assert kinds == ((kind, 1),), (nodeid, full[nodeid])
        assert site is not None, full[nodeid]
        assert site.startswith(f"test_{kind}.py:"), full[nodeid]

    for name in names:
        for nodeid in (n for n in full if n.startswith(f"{name}.py::")):
            alone = verdicts(run(pytester, backend_args, nodeid, report="alone.json"))
            assert alone == {nodeid: full[nodeid]}, f"{nodeid} alone"

    selected = verdicts(run(pytester, backend_args, "-k", "leaky", report="k.json"))
    assert selected == {n: full[n] for n in leaky}


def test_xdist_distributions_and_last_failed_give_the_full_run_verdicts(
    pytester: pytest.Pytester, backend_args: list[str]
) -> None:
    write_corpus(pytester, "module")
    full = verdicts(run(pytester, backend_args, report="full.json"))
    failed = {n: v for n, v in full.items() if v[0] == "failed"}
    with_xdist = only_dbleak_and("xdist")
    for dist in ("load", "loadscope", "loadfile", "worksteal"):
        got = verdicts(
            run(
                pytester,
                backend_args,
                "-n",
                "2",
                "--dist",
                dist,
                report=f"{dist}.json",
                plugins=with_xdist,
            )
        )
        assert got == full, dist

    with_cache = only_dbleak_and("cacheprovider")
    run(pytester, backend_args, report="record.json", plugins=with_cache)
    last_failed = verdicts(
        run(pytester, backend_args, "--lf", report="lf.json", plugins=with_cache)
    )
    assert last_failed == failed
    stepwise = verdicts(run(pytester, backend_args, "--sw", report="sw.json", plugins=with_cache))
    first = min(failed)  # --sw stops at the first failure, in collection order
    assert stepwise[first] == full[first]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_verdicts_do_not_depend_on_the_order_pytest_randomly_picks(
    pytester: pytest.Pytester, seed: int
) -> None:
    pytest.importorskip("pytest_randomly")
    write_corpus(pytester, "module")
    args = ["--dbleak-backend=process"]
    full = verdicts(run(pytester, args, report="full.json"))
    shuffled = verdicts(
        run(
            pytester,
            args,
            "-p",
            "randomly",
            f"--randomly-seed={seed}",
            report="r.json",
            plugins=only_dbleak_and("randomly"),
        )
    )
    assert shuffled == full


XUNIT = (
    PREAMBLE
    + """
import unittest

HELD = []


def teardown_module():
    for conn in HELD:
        conn.close()


class TestMethods:
    def setup_method(self):
        self.conn = pymysql.connect(**connect_args(URL[0]))

    def teardown_method(self):
        self.conn.close()  # the test's own teardown: inside the window

    def test_clean_closed_by_teardown_method(self, dbleak_mysql_url):
        pass


class TestClass:
    @classmethod
    def teardown_class(cls):
        for conn in HELD:
            conn.close()

    def test_leaky_closed_by_teardown_class(self, dbleak_mysql_url):
        HELD.append(pymysql.connect(**connect_args(dbleak_mysql_url)))  # LEAK


class UnitTests(unittest.TestCase):
    @classmethod
    def tearDownClass(cls):
        for conn in HELD:
            conn.close()

    def setUp(self):
        self.conn = pymysql.connect(**connect_args(URL[0]))

    def tearDown(self):
        self.conn.close()

    def test_clean_closed_by_tear_down(self):
        pass

    def test_clean_closed_by_add_cleanup(self):
        conn = pymysql.connect(**connect_args(URL[0]))
        self.addCleanup(conn.close)

    def test_leaky_closed_by_tear_down_class(self):
        HELD.append(pymysql.connect(**connect_args(URL[0])))  # LEAK


def test_leaky_closed_by_teardown_module(dbleak_mysql_url):
    HELD.append(pymysql.connect(**connect_args(dbleak_mysql_url)))  # LEAK
"""
)

XUNIT_CONFTEST = """
import pytest

import test_xunit


@pytest.fixture(scope="session", autouse=True)
def url(dbleak_mysql_url):
    test_xunit.URL.append(dbleak_mysql_url)
"""


def test_the_window_holds_xunit_and_unittest_teardowns_and_leaves_out_wider_ones(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_xunit=XUNIT.replace("HELD = []", "HELD = []\nURL = []"))
    pytester.makeconftest(XUNIT_CONFTEST)
    args = ["--dbleak-backend=process"]
    full = verdicts(run(pytester, args, report="full.json"))
    failed = sorted(n.rsplit("::", 1)[1] for n, v in full.items() if v[0] == "failed")
    assert failed == [
        "test_leaky_closed_by_tear_down_class",
        "test_leaky_closed_by_teardown_class",
        "test_leaky_closed_by_teardown_module",
    ]
    clean = {n: v for n, v in full.items() if "clean" in n}
    assert clean, full
    assert all(v == ("passed", (), None) for v in clean.values()), full
    for nodeid in full:
        assert verdicts(run(pytester, args, nodeid, report="one.json")) == {nodeid: full[nodeid]}, (
            nodeid
        )


def test_a_pytest_whose_setup_state_does_not_fit_stops_the_run_with_one_line(
    pytester: pytest.Pytester,
) -> None:
    # Stands in for a future pytest: the setup stack the window relies on is gone.
    pytester.makeconftest("""
import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    session._setupstate.stack = []  # empty, but no longer a node -> finalizers map
""")
    pytester.makepyfile(test_any="def test_any(dbleak_mysql_url):\n    pass\n")
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=process", *ONLY_DBLEAK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == [
        f"ERROR: dbleak: pytest {pytest.__version__}: Session._setupstate.stack is not a "
        "dict; pytest-dbleak was checked on pytest 8.0 - 9.2 and cannot place its leak "
        "window on this version"
    ]
