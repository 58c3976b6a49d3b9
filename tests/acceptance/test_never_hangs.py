"""A leak never hangs the run, and its blame stays on the test that caused it (issue 17).

- A transaction a test left open holds its locks after its window closed; a wider
  fixture's teardown (``drop_all()``) then waits behind it. The lock watch ends the
  holder - the test that left it is at fault - and the teardown proceeds: alone by node
  id, in the full run, under ``--dbleak-report-only``, with a baseline that knows the
  leak, and under xdist.
- A thread a test started and that outlives it opens a connection later: the leak is
  that test's (summary, JSON report, exit status 6), never the test running meanwhile.
- ``--lf`` runs again a test whose run was interrupted in its teardown.

Every inner run has a time limit: a regression fails here instead of hanging the suite.
"""

from __future__ import annotations

import json

import pytest

from tests.acceptance.helpers import (
    FAST,
    ONLY_DBLEAK,
    PREAMBLE,
    failure_of,
    line_of,
    only_dbleak_and,
)

# The lock-wait bound plus a few seconds, with room for a loaded machine: an inner run
# that hangs behind a lock is stopped there and fails the test.
LIMIT = 60
LOCK_WAIT = "--dbleak-lock-wait=1"


@pytest.fixture(params=["process", "url"])
def backend(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "url":
        url = request.getfixturevalue("local_mysql_url")
        return ["--dbleak-backend=url", f"--dbleak-mysql-url={url}"]
    return ["--dbleak-backend=process"]


SCHEMA = (
    PREAMBLE
    + """
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)  # WAITS
    engine.dispose()
"""
)

CLEAN = """

def test_clean(engine):
    with Session(engine) as session:
        session.execute(sa.select(Item)).all()
"""

LEAKY = """

def test_leaks_a_session(engine):
    session = Session(engine)
    session.execute(sa.select(Item)).all()  # HOLDS
    KEEP.append(session)
"""

CLEAN_THEN_LEAK = SCHEMA + CLEAN + LEAKY  # the leak is the last test of the fixture's scope
LEAK_THEN_CLEAN = SCHEMA + LEAKY + CLEAN


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--dbleak", FAST, LOCK_WAIT, *ONLY_DBLEAK, *args, timeout=LIMIT
    )


def assert_holder_ended_by(result: pytest.RunResult, source: str) -> None:
    result.stdout.fnmatch_lines(
        [
            "*ended server connection * left in a transaction (since *, opened at "
            f"test_teardown.py:{line_of(source, '# HOLDS')} in test_leaks_a_session) by "
            "test_teardown.py::test_leaks_a_session: it blocked DROP TABLE item (waited * s, "
            f"at test_teardown.py:{line_of(source, '# WAITS')} in engine)"
        ]
    )


def test_a_leak_that_blocks_a_session_teardown_alone_by_node_id_fails_and_the_run_ends(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    pytester.makepyfile(test_teardown=CLEAN_THEN_LEAK)
    result = run(pytester, *backend, "test_teardown.py::test_leaks_a_session")
    result.assert_outcomes(failed=1)
    assert result.ret == 6
    block = failure_of(result, "test_leaks_a_session")
    block.fnmatch_lines(
        [
            "dbleak: 1 connection leaked (1 checked_out, lock_wait) at test_teardown.py:*",
            "*statement stuck behind a lock*: ended server connection *",
        ]
    )
    assert_holder_ended_by(result, CLEAN_THEN_LEAK)


def test_its_clean_twin_alone_by_node_id_passes(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    pytester.makepyfile(test_teardown=CLEAN_THEN_LEAK)
    result = run(pytester, *backend, "test_teardown.py::test_clean")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert "ended server connection" not in result.stdout.str()


@pytest.mark.parametrize("source", [CLEAN_THEN_LEAK, LEAK_THEN_CLEAN], ids=["last", "first"])
def test_in_the_full_run_only_the_leak_fails_and_the_teardown_completes(
    pytester: pytest.Pytester, backend: list[str], source: str
) -> None:
    pytester.makepyfile(test_teardown=source)
    result = run(pytester, *backend)
    result.assert_outcomes(passed=1, failed=1)  # no teardown error: drop_all() ran
    result.stdout.fnmatch_lines(["FAILED test_teardown.py::test_leaks_a_session - dbleak: *"])
    assert result.ret == 6
    assert_holder_ended_by(result, source)


@pytest.mark.parametrize("source", [CLEAN_THEN_LEAK, LEAK_THEN_CLEAN], ids=["last", "first"])
def test_a_reported_only_leak_does_not_hang_the_run_either(
    pytester: pytest.Pytester, backend: list[str], source: str
) -> None:
    pytester.makepyfile(test_teardown=source)
    result = run(pytester, *backend, "--dbleak-report-only")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert_holder_ended_by(result, source)


def test_a_leak_known_to_the_baseline_does_not_hang_the_run_either(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_teardown=CLEAN_THEN_LEAK)
    record = run(pytester, "--dbleak-backend=process", "--dbleak-baseline=base.json")
    record.stdout.fnmatch_lines(["*baseline: recorded 1 leaking test*"])
    known = run(pytester, "--dbleak-backend=process", "--dbleak-baseline=base.json")
    known.assert_outcomes(passed=2)
    assert known.ret == 0
    assert_holder_ended_by(known, CLEAN_THEN_LEAK)


def test_under_xdist_the_leak_fails_and_every_worker_finishes(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    pytester.makepyfile(test_teardown=LEAK_THEN_CLEAN)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        FAST,
        LOCK_WAIT,
        *backend,
        *only_dbleak_and("xdist"),
        "-n",
        "2",
        timeout=LIMIT,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_teardown.py::test_leaks_a_session*"])
    assert result.ret == 6
    assert_holder_ended_by(result, LEAK_THEN_CLEAN)


LATE = (
    PREAMBLE
    + """
GO, DONE = threading.Event(), threading.Event()
STARTED = []


@pytest.fixture(scope="session")
def release():
    yield
    # Alone by node id: the thread runs on after the last test, then connects.
    GO.set()
    DONE.wait(10)


def test_1_starts_a_thread_that_connects_after_it_ended(dbleak_mysql_url, release):
    def later():
        GO.wait(10)
        conn = pymysql.connect(**connect_args(dbleak_mysql_url))  # LATE
        KEEP.append(conn)  # CLOSE
        DONE.set()

    STARTED.append(threading.Thread(target=later, daemon=True))
    STARTED[-1].start()


def test_2_runs_while_the_thread_connects():
    GO.set()
    if STARTED:
        DONE.wait(10)
"""
)
LATE_CLEAN = LATE.replace("KEEP.append(conn)  # CLOSE", "conn.close()  # CLOSE")


@pytest.mark.parametrize(
    "args",
    [(), ("test_late.py::test_1_starts_a_thread_that_connects_after_it_ended",)],
    ids=["full", "alone"],
)
def test_a_late_leak_is_blamed_on_the_test_whose_thread_opened_it(
    pytester: pytest.Pytester, backend: list[str], args: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_late=LATE)
    result = run(
        pytester, *backend, "--dbleak-report=leaks.json", "--dbleak-html=leaks.html", *args
    )
    result.assert_outcomes(passed=2 - len(args))  # the test running meanwhile passes
    assert result.ret == 6
    late = line_of(LATE, "# LATE")
    result.stdout.fnmatch_lines(
        [
            "*dbleak: 1 test leaked connections*",
            "test_late.py::test_1_starts_a_thread_that_connects_after_it_ended: 1 connection "
            f"leaked (1 server_connection) at test_late.py:{late}",
        ]
    )
    report = json.loads((pytester.path / "leaks.json").read_text())
    tests = {t["nodeid"]: t for t in report["tests"]}
    first = tests["test_late.py::test_1_starts_a_thread_that_connects_after_it_ended"]
    assert [leak["kind"] for leak in first["leaks"]] == ["server_connection"]
    assert "by a thread it started" in first["leaks"][0]["what"]
    assert not tests.get("test_late.py::test_2_runs_while_the_thread_connects", {}).get("leaks")
    page = (pytester.path / "leaks.html").read_text()
    assert "test_1_starts_a_thread_that_connects_after_it_ended" in page
    assert "by a thread it started" in page


def test_its_clean_twin_passes_whole_and_alone(
    pytester: pytest.Pytester, backend: list[str]
) -> None:
    pytester.makepyfile(test_late=LATE_CLEAN)
    for args in ((), ("test_late.py::test_1_starts_a_thread_that_connects_after_it_ended",)):
        result = run(pytester, *backend, *args)
        result.assert_outcomes(passed=2 - len(args))
        assert result.ret == 0


@pytest.mark.parametrize("source", [LATE, LATE_CLEAN], ids=["late", "clean"])
def test_under_xdist_a_late_leak_is_blamed_on_its_test_too(
    pytester: pytest.Pytester, source: str
) -> None:
    pytester.makepyfile(test_late=source)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        FAST,
        "--dbleak-backend=process",
        *only_dbleak_and("xdist"),
        "-n",
        "2",
        "--dist",
        "loadfile",
        timeout=LIMIT,
    )
    result.assert_outcomes(passed=2)
    if source is LATE:
        assert result.ret == 6
        result.stdout.fnmatch_lines(
            ["test_late.py::test_1_starts_a_thread_that_connects_after_it_ended: 1 connection*"]
        )
    else:
        assert result.ret == 0


INTERRUPTED = (
    PREAMBLE
    + """

@pytest.fixture
def stuck():
    yield
    if not __import__("os").environ.get("FINISH"):
        raise KeyboardInterrupt  # as Ctrl-C, or a CI job's time limit, in the teardown


def test_interrupted_in_its_teardown(stuck):
    pass


def test_other():
    pass
"""
)


def test_last_failed_runs_again_a_test_interrupted_in_its_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_stop=INTERRUPTED)
    with_cache = only_dbleak_and("cacheprovider")
    first = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *with_cache, timeout=LIMIT
    )
    assert first.ret == pytest.ExitCode.INTERRUPTED
    again = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *with_cache, "--lf", "-v", timeout=LIMIT
    )
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*"])
    again.stdout.fnmatch_lines(["*test_interrupted_in_its_teardown*"])
    # Its clean twin: finished, the teardown passes, and --lf has nothing to rerun.
    monkeypatch.setenv("FINISH", "1")
    done = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *with_cache, timeout=LIMIT
    )
    done.assert_outcomes(passed=2)
    after = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", FAST, *with_cache, "--lf", timeout=LIMIT
    )
    after.stdout.fnmatch_lines(["run-last-failure: no previously failed tests*"])
