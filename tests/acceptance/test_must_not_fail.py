"""What is not a leak: the detector must let these tests pass (process backend).

Each scenario is a module of passing tests; where a test fails on purpose, the
assertion names it and checks that only it failed.
"""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, failure_of


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *ONLY_DBLEAK, "-rA", *args
    )


GROWTH_CONFTEST = """
import pymysql
import pytest
import sqlalchemy as sa

TARGET = {}


def connect():
    u = sa.engine.make_url(TARGET["url"])
    return pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                           database=u.database, ssl_disabled=True)


# Created when pytest imports this conftest, before the plugin starts tracking; it first
# connects inside a test.
IMPORT_TIME_ENGINE = sa.create_engine("mysql+pymysql://", creator=connect)


@pytest.fixture(scope="session", autouse=True)
def target(dbleak_mysql_url):
    TARGET["url"] = dbleak_mysql_url
    yield
    IMPORT_TIME_ENGINE.dispose()
"""

GROWTH = '''
from conftest import IMPORT_TIME_ENGINE, connect

# Created at collection, before any test.
MODULE_ENGINE = sa.create_engine("mysql+pymysql://", creator=connect)


def grow(engine, n):
    """Hold n connections at once, from n threads, then give them all back."""
    barrier = threading.Barrier(n)

    def work():
        with engine.connect() as conn:
            barrier.wait(timeout=10)
            conn.execute(sa.text("SELECT 1"))

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.pool.checkedin() >= n


def make_engine(url):
    return sa.create_engine(url, pool_size=4, max_overflow=0)


@pytest.fixture(scope="session")
def session_engine(dbleak_mysql_url):
    engine = make_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="package")
def package_engine(dbleak_mysql_url):
    engine = make_engine(dbleak_mysql_url)
    grow(engine, 2)  # already holding idle connections when the test starts
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_engine(dbleak_mysql_url):
    engine = make_engine(dbleak_mysql_url)
    grow(engine, 2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="class")
def class_engine(dbleak_mysql_url):
    engine = make_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


def test_an_engine_created_at_conftest_import_grows_its_pool():
    grow(IMPORT_TIME_ENGINE, 3)


def test_a_module_level_engine_grows_its_pool():
    grow(MODULE_ENGINE, 3)


def test_a_session_engine_first_used_during_the_test_grows_with_threads(session_engine):
    grow(session_engine, 4)


def test_the_session_engine_grows_again_in_a_later_test(session_engine):
    grow(session_engine, 4)


def test_a_package_fixture_engine_grows_its_pool(package_engine):
    grow(package_engine, 4)


def test_a_module_fixture_engine_grows_its_pool(module_engine):
    grow(module_engine, 4)


class TestClassScope:
    def test_a_class_fixture_engine_grows_its_pool(self, class_engine):
        grow(class_engine, 3)

    def test_and_grows_again(self, class_engine):
        grow(class_engine, 4)
'''


def test_legitimate_pool_growth_of_engines_from_before_the_test_or_wider_fixtures_passes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(GROWTH_CONFTEST)
    pytester.makepyfile(test_growth=PREAMBLE + GROWTH)
    result = run(pytester)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*- dbleak: no leaks in 8 checked tests -*"])


WIDER_FIXTURES = '''
@pytest.fixture(scope="session")
def session_connection(dbleak_mysql_url):
    """Holds a checked-out Connection for the whole session."""
    engine = sa.create_engine(dbleak_mysql_url)
    conn = engine.connect()
    yield conn
    conn.close()
    engine.dispose()


@pytest.fixture(scope="session")
def session_raw_connection(dbleak_mysql_url):
    conn = pymysql.connect(**connect_args(dbleak_mysql_url))
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def module_engine_in_use(dbleak_mysql_url):
    """An engine whose fixture keeps one connection checked out and one idle."""
    engine = sa.create_engine(dbleak_mysql_url)
    engine.connect().close()
    held = engine.connect()
    yield engine
    held.close()
    engine.dispose()


def test_nothing_set_up_yet():
    pass


def test_a_session_fixture_holding_a_checked_out_connection_is_not_a_leak(session_connection):
    session_connection.execute(sa.text("SELECT 1"))


def test_a_session_fixture_holding_a_raw_connection_is_not_a_leak(session_raw_connection):
    with session_raw_connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_a_module_fixture_engine_with_a_checked_out_connection_is_not_a_leak(
    module_engine_in_use,
):
    with module_engine_in_use.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_later_tests_are_not_blamed_for_them(
    session_connection, session_raw_connection, module_engine_in_use
):
    session_connection.execute(sa.text("SELECT 1"))
'''


def test_connections_owned_by_wider_fixtures_first_set_up_during_a_test_do_not_fail_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_wider=PREAMBLE + WIDER_FIXTURES)
    result = run(pytester)
    result.assert_outcomes(passed=5)


EARLIER_LEAK = """
def test_leaky(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    engine = sa.create_engine(dbleak_mysql_url)
    KEEP.append(engine.connect())
    KEEP.append(engine)
    other = sa.create_engine(dbleak_mysql_url)
    other.connect().close()
    KEEP.append(other)


def test_next_clean_test(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_one_after_that():
    pass
"""


def test_a_leak_made_by_an_earlier_test_fails_only_that_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_earlier=PREAMBLE + EARLIER_LEAK)
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    failure_of(result, "test_leaky").fnmatch_lines(
        [
            "dbleak: 3 connections leaked (1 checked_out, 1 undisposed_engine, "
            "1 server_connection) at test_earlier.py:*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "PASSED test_earlier.py::test_next_clean_test",
            "PASSED test_earlier.py::test_one_after_that",
        ]
    )


ORDINARY = """
@pytest.fixture
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    yield engine
    engine.dispose()


def test_a_function_fixture_that_creates_and_disposes_an_engine(engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_an_engine_disposed_then_used_again(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    engine.connect().close()
    engine.dispose()  # dispose() puts a new, empty pool in place
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


def test_a_module_engine_disposed_then_used_again(dbleak_mysql_url):
    global SHARED
    SHARED.dispose()
    SHARED.connect().close()


@pytest.fixture(scope="module", autouse=True)
def shared(dbleak_mysql_url):
    global SHARED
    SHARED = sa.create_engine(dbleak_mysql_url)
    SHARED.connect().close()
    yield
    SHARED.dispose()


def test_an_ordinary_failure_keeps_its_own_error(engine):
    engine.connect().close()
    assert 1 + 1 == 3, "ordinary failure"


def test_an_ordinary_failure_that_also_leaked(engine, dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    assert 1 + 1 == 3, "failure with a leak"
"""


def test_ordinary_engine_use_passes_and_an_ordinary_failure_keeps_its_own_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_ordinary=PREAMBLE + ORDINARY)
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # not the leaks-only exit code

    plain = failure_of(result, "test_an_ordinary_failure_keeps_its_own_error")
    plain.fnmatch_lines(["E * AssertionError: ordinary failure"])
    plain.no_fnmatch_line("*- dbleak -*")
    plain.no_fnmatch_line("dbleak: *")

    leaked = failure_of(result, "test_an_ordinary_failure_that_also_leaked")
    leaked.fnmatch_lines(
        [
            "E * AssertionError: failure with a leak",
            "*- dbleak -*",
            "dbleak: 1 connection leaked (1 server_connection) at test_ordinary.py:*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED test_ordinary.py::test_an_ordinary_failure_keeps_its_own_error - Asser*",
            "FAILED test_ordinary.py::test_an_ordinary_failure_that_also_leaked - Asser*",
        ]
    )


SETUP_ERROR = """
@pytest.fixture
def broken(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))
    raise RuntimeError("fixture broke")


def test_uses_a_fixture_that_leaks_then_raises(broken):
    pass
"""


def test_a_fixture_that_leaks_and_raises_is_one_error_that_carries_the_leak_section(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_setup=PREAMBLE + SETUP_ERROR)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    failure_of(result, "test_uses_a_fixture_that_leaks_then_raises").fnmatch_lines(
        [
            "E * RuntimeError: fixture broke",
            "*- dbleak -*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_uses_a_fixture_that_leaks_*")
