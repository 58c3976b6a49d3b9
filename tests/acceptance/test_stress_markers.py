"""The stress markers turn a rare or concurrency-only leak into a failing test with a rate.

A leak that happens on one run in 25, when a Socket.IO client leaves, or only when two
HTTP requests overlap does not show in a single call.  ``@pytest.mark.dbleak_jobs``,
``dbleak_socket_churn`` and ``dbleak_http_load`` with the fixtures of the same names
repeat the code many times, concurrently, against real servers on the loopback
interface; the leak check that follows fails the test and says how often it leaked
("4 connections leaked over 100 runs (1 in 25)").

Each test writes a small test module and runs pytest on it in a subprocess, against the
plugin's own MariaDB server (process backend); clean twins run in the same inner session
as the leaky code they mirror.
"""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import FAST, failure_of, line_of

BACKEND = "--dbleak-backend=process"


def run(pytester: pytest.Pytester, *args: str, **modules: str) -> pytest.RunResult:
    pytester.makepyfile(**modules)
    # The inner tests must run in file order: the checks read PASSED lines in that order.
    return pytester.runpytest_subprocess(
        *args, "-p", "no:cacheprovider", "-p", "no:randomly", "-rA"
    )


def run_dbleak(pytester: pytest.Pytester, **modules: str) -> pytest.RunResult:
    return run(pytester, "--dbleak", BACKEND, FAST, **modules)


def headline_of(result: pytest.RunResult, test_name: str) -> str:
    """The first line of a test's failure entry, where dbleak puts its headline."""
    lines = failure_of(result, test_name).lines
    assert len(lines) > 1, result.stdout.str()
    return lines[1]


# -- jobs: a leak on one call in 25 ----------------------------------------------------
JOBS = '''\
import threading

import pytest
import sqlalchemy as sa

engine = None  # the application's engine: one per module, like a real app's
FORGOTTEN = []  # connections the leaky error path keeps "for a retry" and never closes


@pytest.fixture(scope="module", autouse=True)
def app_engine(dbleak_mysql_url):
    global engine
    engine = sa.create_engine(dbleak_mysql_url)
    yield
    engine.dispose()


def sync_job(*, leaky):
    """A scheduled job whose remote side fails on every 25th call (a counter, not chance)."""
    lock = threading.Lock()
    calls = []

    def job():
        with lock:
            calls.append(None)
            n = len(calls)
        conn = engine.connect()  # LEAK-job
        conn.execute(sa.text("SELECT 1"))
        if n % 25 == 0:  # the error path
            if leaky:
                FORGOTTEN.append(conn)
                return
            conn.close()
            return
        conn.close()

    job.calls = calls
    return job


def test_leaky_job_called_once():
    job = sync_job(leaky=True)
    job()
    assert len(job.calls) == 1


@pytest.mark.dbleak_jobs(runs=100)
def test_leaky_job_under_stress(dbleak_jobs):
    job = sync_job(leaky=True)
    result = dbleak_jobs.run(job)
    assert (result.kind, result.runs, result.concurrency) == ("jobs", 100, 4)
    assert len(job.calls) == 100


@pytest.mark.dbleak_jobs(runs=100)
def test_clean_job_under_stress(dbleak_jobs):
    job = sync_job(leaky=False)
    result = dbleak_jobs.run(job)
    assert (result.kind, result.runs, result.concurrency) == ("jobs", 100, 4)
    assert len(job.calls) == 100
'''


def test_a_job_that_leaks_once_in_25_calls_passes_alone_but_fails_under_dbleak_jobs_with_the_rate(
    pytester: pytest.Pytester,
) -> None:
    result = run_dbleak(pytester, test_jobs=JOBS)

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_jobs.py::test_leaky_job_called_once",
            "PASSED test_jobs.py::test_clean_job_under_stress",
        ]
    )
    line = line_of(JOBS, "# LEAK-job")
    assert headline_of(result, "test_leaky_job_under_stress") == (
        "dbleak: 4 connections leaked over 100 runs (1 in 25) (4 checked_out) "
        f"at test_jobs.py:{line}"
    )
    failure_of(result, "test_leaky_job_under_stress").fnmatch_lines(
        [
            # The four leaks share one stack: one entry (issue 13).
            "4 * checked-out connection never returned: server connections of QueuePool "
            "checked out",
            "    connection ids: *, *, *, *",
            "    in thread* dbleak-job_*",
            f"    test_jobs.py:{line} in job",
            "*- dbleak -*",
            "checked-out pooled connections: 0 before, 4 after",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= dbleak: 1 test leaked connections =*",
            "test_jobs.py::test_leaky_job_under_stress: 4 connections leaked over 100 runs "
            f"(1 in 25) (4 checked_out) at test_jobs.py:{line}",
        ]
    )
    assert result.ret == 6  # only leaks failed


RAISING_JOBS = '''\
import threading

import pytest


def flaky_job():
    """Call 7 fails; call 60 fails too, after it: the runners' one thread makes "first"
    an order, not a race (the unit tests cover the choice among concurrent failures)."""
    lock = threading.Lock()
    calls = []

    def job():
        with lock:
            calls.append(None)
            n = len(calls)
        if n == 7:
            raise RuntimeError("sync failed on call 7")  # RAISE-first
        if n == 60:
            raise ValueError("sync failed on call 60")

    job.calls = calls
    return job


@pytest.mark.dbleak_jobs(runs=100, threads=1)
def test_failing_job_under_stress(dbleak_jobs):
    dbleak_jobs.run(flaky_job())


@pytest.mark.dbleak_jobs(runs=100, threads=1)
def test_failing_job_is_reraised_once_every_call_ran(dbleak_jobs):
    job = flaky_job()
    with pytest.raises(RuntimeError, match="^sync failed on call 7$") as excinfo:
        dbleak_jobs.run(job)
    assert len(job.calls) == 100
    assert excinfo.traceback[-1].name == "job"  # the original exception, with its frames
'''


def test_dbleak_jobs_run_reraises_the_first_exception_a_job_raised(
    pytester: pytest.Pytester,
) -> None:
    result = run_dbleak(pytester, test_raising=RAISING_JOBS)

    result.assert_outcomes(passed=1, failed=1)
    block = failure_of(result, "test_failing_job_under_stress")
    block.fnmatch_lines(
        [
            "E * RuntimeError: sync failed on call 7",
            f"test_raising.py:{line_of(RAISING_JOBS, '# RAISE-first')}: RuntimeError",
        ]
    )
    block.no_fnmatch_line("*ValueError*")
    block.no_fnmatch_line("*dbleak: *")  # a failing job is not a leak
    result.stdout.fnmatch_lines(
        ["FAILED test_raising.py::test_failing_job_under_stress - RuntimeError: sync*"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# -- Socket.IO churn: a disconnect handler's task that never gives its connection back -
SOCKET = """\
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_socketio import SocketIO
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

db = SQLAlchemy()


def create_app(url, record_visit):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    # Room for every leaked connection: a pool that ran dry would block, not leak.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"max_overflow": -1}
    db.init_app(app)
    socketio = SocketIO(app, async_mode="threading")

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        socketio.start_background_task(record_visit, app)

    return app, socketio


def record_visit_in_a_session_never_closed(app):
    with app.app_context():
        session = Session(db.engine)
        session.execute(sa.text("SELECT 1"))  # LEAK-session


def record_visit_in_a_context_never_popped(app):
    app.app_context().push()
    db.session.execute(sa.text("SELECT 1"))  # LEAK-context


def record_visit_fixed(app):
    with app.app_context():  # popping it makes Flask-SQLAlchemy remove the session
        db.session.execute(sa.text("SELECT 1"))


@pytest.fixture
def make_app(dbleak_mysql_url):
    apps = []

    def make(record_visit):
        app, socketio = create_app(dbleak_mysql_url, record_visit)
        apps.append(app)
        return app, socketio

    yield make
    for app in apps:  # an app per test: its engine is the test's to dispose
        with app.app_context():
            db.engine.dispose()


@pytest.mark.dbleak_socket_churn(clients=20)
def test_leaky_task_session_never_closed(make_app, dbleak_socket_churn):
    result = dbleak_socket_churn.run(*make_app(record_visit_in_a_session_never_closed))
    assert (result.kind, result.runs, result.disconnects) == ("socketio", 20, 20)


@pytest.mark.dbleak_socket_churn(clients=20)
def test_leaky_task_context_never_popped(make_app, dbleak_socket_churn):
    result = dbleak_socket_churn.run(*make_app(record_visit_in_a_context_never_popped))
    assert (result.kind, result.runs, result.disconnects) == ("socketio", 20, 20)


@pytest.mark.dbleak_socket_churn(clients=20)
def test_fixed_task(make_app, dbleak_socket_churn):
    result = dbleak_socket_churn.run(*make_app(record_visit_fixed))
    assert (result.kind, result.runs, result.disconnects) == ("socketio", 20, 20)
    assert result.server_tasks >= 20
"""


def test_a_disconnect_task_without_session_cleanup_fails_under_dbleak_socket_churn_and_the_fix_passes(  # noqa: E501
    pytester: pytest.Pytester,
) -> None:
    result = run_dbleak(pytester, test_socket=SOCKET)

    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["PASSED test_socket.py::test_fixed_task"])

    # Every client's task leaks one connection: still checked out, or given back later
    # by the garbage collector when the session is collected.
    line = line_of(SOCKET, "# LEAK-session")
    failure_of(result, "test_leaky_task_session_never_closed").fnmatch_lines(
        [
            f"dbleak: 20 connections leaked over 20 runs (1 in 1) (*) at test_socket.py:{line}",
            f"    test_socket.py:{line} in record_visit_in_a_session_never_closed",
        ]
    )
    # Flask-SQLAlchemy keys its sessions by id() of the app context; a context freed
    # with its thread may lend its id (and its open session) to a later task, so the
    # count of distinct leaked connections is not fixed here -- the failure is.
    line = line_of(SOCKET, "# LEAK-context")
    failure_of(result, "test_leaky_task_context_never_popped").fnmatch_lines(
        [
            f"dbleak: * leaked over 20 runs (1 in *) (* checked_out) at test_socket.py:{line}",
            # One entry for the leaks of one stack (issue 13), however many there are.
            "*checked-out connection never returned: server connection* of QueuePool checked out",
            "    in thread* *(record_visit_in_a_context_never_popped)*",
            f"    test_socket.py:{line} in record_visit_in_a_context_never_popped",
        ]
    )
    assert result.ret == 6


# -- HTTP load: a view that leaks only when two requests overlap -----------------------
HTTP = '''\
import threading

import pytest
import sqlalchemy as sa
from flask import Flask

FORGOTTEN = []  # batch connections the leaky view never closes


def create_app(url, *, leaky, batch_wait):
    """A report view that writes two overlapping requests as one batch.

    Each request waits up to `batch_wait` s for a partner; the leader of a pair opens
    an extra connection for the batch.  A request on its own is never batched.
    """
    engine = sa.create_engine(url, max_overflow=-1)  # room for every leaked connection
    app = Flask(__name__)
    app.extensions["engine"] = engine
    partner = threading.Barrier(2, timeout=batch_wait)

    @app.get("/report")
    def report():
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        try:
            leader = partner.wait() == 0
        except threading.BrokenBarrierError:
            return "alone", 200
        if not leader:
            return "joined", 200
        conn = engine.connect()  # LEAK-batch
        conn.execute(sa.text("SELECT 2"))
        if leaky:
            FORGOTTEN.append(conn)
        else:
            conn.close()
        return "batched", 202

    return app


@pytest.fixture
def make_app(dbleak_mysql_url):
    apps = []

    def make(**kwargs):
        apps.append(create_app(dbleak_mysql_url, **kwargs))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["engine"].dispose()


@pytest.mark.dbleak_http_load(requests=1, concurrency=1)
def test_leaky_view_single_request(make_app, dbleak_http_load):
    result = dbleak_http_load.run(make_app(leaky=True, batch_wait=0.2), "/report")
    assert (result.kind, result.runs, result.concurrency) == ("http", 1, 1)
    assert (result.statuses, result.failures) == ({200: 1}, 0)


@pytest.mark.dbleak_http_load(requests=200, concurrency=10)
def test_leaky_view_under_load(make_app, dbleak_http_load):
    result = dbleak_http_load.run(make_app(leaky=True, batch_wait=10), "/report")
    assert (result.kind, result.runs, result.concurrency) == ("http", 200, 10)
    assert (result.statuses, result.failures) == ({200: 100, 202: 100}, 0)


@pytest.mark.dbleak_http_load(requests=200, concurrency=10)
def test_clean_view_under_load(make_app, dbleak_http_load):
    result = dbleak_http_load.run(make_app(leaky=False, batch_wait=10), "/report")
    assert (result.kind, result.runs, result.concurrency) == ("http", 200, 10)
    assert (result.statuses, result.failures) == ({200: 100, 202: 100}, 0)
    assert result.latency_ms is not None and result.requests_per_second > 0
'''


def test_a_view_that_leaks_only_on_overlapping_requests_passes_one_request_but_fails_under_dbleak_http_load(  # noqa: E501
    pytester: pytest.Pytester,
) -> None:
    result = run_dbleak(pytester, test_http=HTTP)

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_http.py::test_leaky_view_single_request",
            "PASSED test_http.py::test_clean_view_under_load",
        ]
    )
    # 200 requests make 100 overlapping pairs; each pair's leader leaks one connection.
    line = line_of(HTTP, "# LEAK-batch")
    assert headline_of(result, "test_leaky_view_under_load") == (
        "dbleak: 100 connections leaked over 200 runs (1 in 2) (100 checked_out) "
        f"at test_http.py:{line}"
    )
    failure_of(result, "test_leaky_view_under_load").fnmatch_lines(
        ["    in thread* dbleak-wsgi-request-*", f"    test_http.py:{line} in report"]
    )
    assert result.ret == 6


# -- without --dbleak the fixtures just run the load -----------------------------------
WITHOUT_DBLEAK = """\
import threading

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_socketio import SocketIO

KEEP = []


@pytest.mark.dbleak_jobs(runs=7, threads=2)
def test_jobs_with_marker_settings(dbleak_jobs):
    calls = []
    result = dbleak_jobs.run(lambda: calls.append("a"), lambda: calls.append("b"))
    assert (result.kind, result.runs, result.concurrency) == ("jobs", 14, 2)
    assert sorted(calls) == ["a"] * 7 + ["b"] * 7


def test_jobs_with_the_marker_defaults(dbleak_jobs):
    calls = []
    result = dbleak_jobs.run(lambda: calls.append(None))
    assert (result.runs, result.concurrency, len(calls)) == (100, 4, 100)


@pytest.mark.dbleak_jobs(runs=10)
def test_a_leaky_job_is_not_checked(dbleak_jobs, dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    KEEP.append(engine)
    result = dbleak_jobs.run(lambda: KEEP.append(engine.connect()))
    assert result.runs == 10


@pytest.mark.dbleak_http_load(requests=30, concurrency=3)
def test_http_load_counts_every_status(dbleak_http_load):
    app = Flask(__name__)
    app.add_url_rule("/ok", "ok", lambda: "ok")
    app.add_url_rule("/created", "created", lambda: ("made", 201))

    for path, statuses in (("/ok", {200: 30}), ("/created", {201: 30}),
                           ("/missing", {404: 30})):
        result = dbleak_http_load.run(app, path)
        assert (result.kind, result.runs, result.concurrency) == ("http", 30, 3)
        assert (result.statuses, result.failures) == (statuses, 0)


@pytest.mark.dbleak_socket_churn(clients=5, concurrency=2)
def test_socket_churn_with_marker_settings(dbleak_socket_churn):
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")
    left = []
    lock = threading.Lock()

    def record():
        with lock:
            left.append(None)

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        socketio.start_background_task(record)

    result = dbleak_socket_churn.run(app, socketio)
    assert (result.kind, result.runs, result.concurrency) == ("socketio", 5, 2)
    assert (result.disconnects, len(left)) == (5, 5)
    assert result.server_tasks >= 5
"""


def test_the_stress_fixtures_run_the_load_and_return_results_without_dbleak(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, BACKEND, test_plain=WITHOUT_DBLEAK)

    result.assert_outcomes(passed=5)
    result.stdout.no_fnmatch_line("*dbleak: *")
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("args", [["--dbleak", BACKEND], []], ids=["with-dbleak", "without"])
def test_a_misspelt_stress_marker_keyword_is_a_one_line_usage_error(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    result = run(
        pytester,
        *args,
        test_typo="""
import pytest


@pytest.mark.dbleak_jobs(run=5)
def test_typo(dbleak_jobs):
    dbleak_jobs.run(lambda: None)


def test_fine():
    pass
""",
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == [
        "ERROR: dbleak: test_typo.py::test_typo: @pytest.mark.dbleak_jobs: "
        "got an unexpected keyword argument 'run'; did you mean 'runs'?"
    ]
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*passed*")
