"""Unit tests for the stress runners in ``pytest_dbleak.stress``.

No database needed: the runners are exercised against tiny Flask / Flask-SocketIO
apps defined here.  Every test is checked for leftover threads and sockets.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")
flask_socketio = pytest.importorskip("flask_socketio")
pytest.importorskip("socketio")

from pytest_dbleak.stress import (  # noqa: E402  (after the skips: these need the extra)
    HttpLoadRunner,
    JobRunner,
    SocketChurnError,
    SocketChurnRunner,
    StressError,
    _upstream,
    serve_wsgi,
    wsgi,
)

# -- leak guard ---------------------------------------------------------------------


def _open_sockets() -> set[str]:
    """Socket inodes of this process's open file descriptors (Linux only)."""
    fd_dir = "/proc/self/fd"
    found = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(os.path.join(fd_dir, fd))
            if target.startswith("socket:"):
                found.add(target)
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves threads running or sockets open behind it.

    The runners join everything they start, so the check is immediate: no waiting.
    """
    can_list_fds = os.path.isdir("/proc/self/fd")
    threads_before = set(threading.enumerate())
    sockets_before = _open_sockets() if can_list_fds else set()
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()  # unclosed sockets would warn here
    resource_warnings = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not resource_warnings, [str(w.message) for w in resource_warnings]
    new_threads = [t.name for t in threading.enumerate() if t not in threads_before]
    assert not new_threads, f"threads left running: {new_threads}"
    if can_list_fds:
        assert _open_sockets() <= sockets_before, "sockets left open"


# -- JobRunner ----------------------------------------------------------------------


def test_job_stress_calls_each_callable_exactly_runs_times() -> None:
    lock = threading.Lock()
    calls: Counter[str] = Counter()

    def job_a() -> None:
        with lock:
            calls["a"] += 1

    def job_b() -> None:
        with lock:
            calls["b"] += 1

    result = JobRunner(runs=50, threads=4).run(job_a, job_b)

    assert calls == {"a": 50, "b": 50}
    assert (result.kind, result.runs, result.concurrency) == ("jobs", 100, 4)
    assert json.loads(json.dumps(result.as_dict())) == result.as_dict()


def test_job_stress_runs_calls_concurrently_on_its_threads() -> None:
    # A barrier of 4 only opens when 4 calls are in it at the same time; with fewer
    # threads it would time out and the job would raise BrokenBarrierError.
    barrier = threading.Barrier(4, timeout=10)
    lock = threading.Lock()
    thread_names: set[str] = set()

    def job() -> None:
        with lock:
            thread_names.add(threading.current_thread().name)
        barrier.wait()

    result = JobRunner(runs=12, threads=4).run(job)

    assert result.runs == 12
    assert len(thread_names) == 4
    assert all(name.startswith("dbleak-job") for name in thread_names)


def test_job_stress_reraises_the_first_exception_itself() -> None:
    # One thread makes "first" deterministic; every call still runs.
    raised: list[BaseException] = []
    lock = threading.Lock()

    def job() -> None:
        with lock:
            number = len(raised)
            try:
                raise KeyError(number)
            except KeyError as cause:
                error = RuntimeError(f"job {number} failed")
                error.__cause__ = cause
                raised.append(error)
        raise error

    with pytest.raises(RuntimeError) as excinfo:
        JobRunner(runs=5, threads=1).run(job)

    assert len(raised) == 5
    assert excinfo.value is raised[0]
    assert isinstance(excinfo.value.__cause__, KeyError)
    # The traceback still reaches into the job that raised it.
    assert excinfo.traceback[-1].name == "job"


def test_job_stress_waits_for_all_runs_when_one_fails() -> None:
    lock = threading.Lock()
    calls: Counter[str] = Counter()
    failure = ValueError("only once")

    def flaky() -> None:
        with lock:
            calls["flaky"] += 1
            first = calls["flaky"] == 1
        if first:
            raise failure

    def steady() -> None:
        with lock:
            calls["steady"] += 1

    with pytest.raises(ValueError) as excinfo:
        JobRunner(runs=40, threads=4).run(flaky, steady)

    assert excinfo.value is failure
    assert calls == {"flaky": 40, "steady": 40}


@pytest.mark.parametrize(
    ("kwargs", "callables", "error"),
    [
        ({"runs": 0}, (print,), ValueError),
        ({"threads": 0}, (print,), ValueError),
        ({}, (), ValueError),
        ({}, ("not callable",), TypeError),
    ],
)
def test_job_stress_rejects_bad_arguments(
    kwargs: dict[str, int], callables: tuple[Any, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        JobRunner(**kwargs).run(*callables)


# -- SocketChurn --------------------------------------------------------------------


class ChatApp:
    """A tiny Flask-SocketIO app that records what its handlers saw."""

    def __init__(self, *, token: str | None = None, failing_disconnect: bool = False) -> None:
        self.app = flask.Flask(__name__)
        self.socketio = flask_socketio.SocketIO(self.app, async_mode="threading")
        self.lock = threading.Lock()
        self.connected: list[str] = []
        self.disconnected: list[str] = []
        self.reasons: Counter[str] = Counter()
        self.hellos = 0
        self.tasks_done = 0
        socketio = self.socketio

        def slow_cleanup() -> None:
            socketio.sleep(0.05)  # stands in for work, e.g. releasing a resource
            with self.lock:
                self.tasks_done += 1

        @socketio.on("connect")
        def on_connect(auth: Any = None) -> None:
            if token is not None and auth != {"token": token}:
                raise flask_socketio.ConnectionRefusedError("bad token")
            with self.lock:
                self.connected.append(flask.request.sid)

        @socketio.on("hello")
        def on_hello(data: Any) -> None:
            with self.lock:
                self.hellos += 1

        @socketio.on("disconnect")
        def on_disconnect(reason: Any = None) -> None:
            with self.lock:
                self.disconnected.append(flask.request.sid)
                self.reasons[str(reason)] += 1
            socketio.start_background_task(slow_cleanup)
            if failing_disconnect:
                raise LookupError("disconnect handler broke")


def _say_hello(client: Any) -> None:
    client.emit("hello", {"greeting": "hi"})


def test_socket_churn_runs_every_handler_and_task_before_returning() -> None:
    chat = ChatApp()

    result = SocketChurnRunner(clients=30, concurrency=5).run(
        chat.app, chat.socketio, on_connect=_say_hello
    )

    assert len(chat.connected) == 30
    assert sorted(chat.disconnected) == sorted(chat.connected)
    # An orderly leave, not a dropped transport, and the emitted event got there first.
    assert chat.reasons == {"client disconnect": 30}
    assert chat.hellos == 30
    # Background tasks started by the disconnect handler had finished.
    assert chat.tasks_done == 30
    assert (result.kind, result.runs, result.concurrency) == ("socketio", 30, 5)
    assert result.disconnects == 30
    assert result.server_tasks >= 60  # 30 hello handlers + 30 cleanup tasks, at least
    assert json.loads(json.dumps(result.as_dict()))["disconnects"] == 30


def test_socket_churn_leaves_the_socketio_server_as_it_found_it() -> None:
    chat = ChatApp()
    server = chat.socketio.server
    eio = server.eio
    monitor_before = eio.start_service_task
    async_drivers_before = eio._async

    SocketChurnRunner(clients=3, concurrency=3).run(chat.app, chat.socketio)

    # The wrappers were instance attributes shadowing the class's methods; all gone.
    assert "_trigger_event" not in vars(server)
    assert not {"start_background_task", "sleep"} & set(vars(eio))
    assert not {*_upstream.manager_methods(), "get_participants", "get_namespaces"} & set(
        vars(server.manager)
    )
    assert eio._async is async_drivers_before  # the WebSocket class was swapped in a copy
    assert eio.start_service_task == monitor_before
    # And it still serves: a second churn on the same app works.
    SocketChurnRunner(clients=3, concurrency=3).run(chat.app, chat.socketio)
    assert len(chat.disconnected) == 6


def test_socket_churn_refused_auth_raises_a_clear_error() -> None:
    chat = ChatApp(token="letmein")

    with pytest.raises(SocketChurnError, match=r"could not connect.*bad token") as excinfo:
        SocketChurnRunner(clients=5, concurrency=2).run(
            chat.app, chat.socketio, auth={"token": "wrong"}
        )

    assert excinfo.value.__cause__ is not None
    assert chat.connected == []
    assert chat.disconnected == []


def test_socket_churn_accepted_auth_connects() -> None:
    chat = ChatApp(token="letmein")

    SocketChurnRunner(clients=4, concurrency=2).run(
        chat.app, chat.socketio, auth={"token": "letmein"}
    )

    assert len(chat.disconnected) == 4


def test_socket_churn_on_connect_error_is_raised_after_cleanup() -> None:
    chat = ChatApp()
    failure = KeyError("on_connect broke")

    def on_connect(client: Any) -> None:
        raise failure

    with pytest.raises(SocketChurnError, match="on_connect raised") as excinfo:
        SocketChurnRunner(clients=20, concurrency=4).run(
            chat.app, chat.socketio, on_connect=on_connect
        )

    assert excinfo.value.__cause__ is failure
    # It stopped early, but every client that connected also left, and was awaited.
    assert 1 <= len(chat.connected) <= 20
    assert sorted(chat.disconnected) == sorted(chat.connected)
    assert chat.tasks_done == len(chat.connected)


def test_socket_churn_reports_a_failing_disconnect_handler() -> None:
    chat = ChatApp(failing_disconnect=True)

    with pytest.raises(SocketChurnError, match="disconnect handler") as excinfo:
        SocketChurnRunner(clients=3, concurrency=3).run(chat.app, chat.socketio)

    assert isinstance(excinfo.value.__cause__, LookupError)
    assert len(chat.disconnected) == 3


def test_socket_churn_needs_an_initialised_threading_socketio() -> None:
    app = flask.Flask(__name__)
    with pytest.raises(ValueError, match="no server yet"):
        SocketChurnRunner(clients=1).run(app, flask_socketio.SocketIO())


def test_a_missing_upstream_target_fails_the_churn_loudly_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if python-engineio no longer served WebSockets through SimpleWebSocketWSGI:
    # the churn must say so, not run without its workaround.
    chat = ChatApp()
    eio = chat.socketio.server.eio
    monkeypatch.setattr(eio, "_async", {**eio._async, "websocket": object})

    with pytest.raises(_upstream.UpstreamChanged) as excinfo:
        SocketChurnRunner(clients=2, concurrency=1).run(chat.app, chat.socketio)

    message = str(excinfo.value)
    assert "\n" not in message
    installed = _upstream.installed_version("python-engineio")
    assert f"python-engineio {installed} does not have" in message
    floor, newest = _upstream.VERIFIED_ON["python-engineio"]
    assert f"verified on {floor} to {newest}" in message
    assert chat.connected == []
    # Nothing was left patched: the driver table is the one it found.
    assert eio._async["websocket"] is object
    assert "_trigger_event" not in vars(chat.socketio.server)


def test_a_method_upstream_adds_to_the_manager_is_serialised_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socketio

    held_elsewhere: list[bool] = []

    def count_members(self: Any, namespace: str) -> int:
        # Is the manager's lock held while it runs?  Ask from another thread.
        probe = threading.Thread(
            target=lambda: held_elsewhere.append(not lock.acquire(blocking=False))
        )
        probe.start()
        probe.join(5)
        return len(self.rooms.get(namespace, {}))

    monkeypatch.setattr(
        socketio.base_manager.BaseManager, "count_members", count_members, raising=False
    )
    manager = ChatApp().socketio.server.manager
    lock = threading.RLock()

    replacements = dict(_upstream.serialise_manager(manager, lock))

    assert "count_members" in replacements
    assert replacements["count_members"]("/") == 0
    assert held_elsewhere == [True]
    # And the one that runs application code (an ack callback) is left alone.
    assert "trigger_callback" not in replacements
    # Generators come back as snapshots taken under the lock.
    assert list(replacements["get_namespaces"]()) == list(manager.get_namespaces())


class _GilYieldingDict(dict[Any, Any]):
    """A dict that gives up the GIL on every lookup.

    python-socketio's manager reads and updates such dicts in check-then-act
    sequences; yielding inside them makes the request threads of different
    clients interleave there, as a busy machine does now and then.
    """

    def __contains__(self, key: object) -> bool:
        time.sleep(0.001)
        return super().__contains__(key)

    def __getitem__(self, key: Any) -> Any:
        time.sleep(0.001)
        return super().__getitem__(key)


def test_socket_churn_serialises_the_socketio_managers_bookkeeping() -> None:
    # Unserialised, this fails nearly every time: KeyError: '/' in the manager's
    # connect(), is_connected() or basic_disconnect(), then a client that cannot
    # connect or whose disconnect handler never runs.
    chat = ChatApp()
    manager = chat.socketio.server.manager
    # pending_connect is python-socketio 5.18 and later
    names = ("rooms", "pending_connect", "pending_disconnect")
    books = [name for name in names if hasattr(manager, name)]
    for name in books:
        setattr(manager, name, _GilYieldingDict(getattr(manager, name)))

    result = SocketChurnRunner(clients=30, concurrency=5).run(chat.app, chat.socketio)

    assert result.disconnects == 30
    assert len(chat.connected) == 30
    assert sorted(chat.disconnected) == sorted(chat.connected)
    assert chat.reasons == {"client disconnect": 30}
    assert chat.tasks_done == 30
    # Every client left the manager's books.
    assert [getattr(manager, name) for name in books] == [{}] * len(books)


def _server_websocket(state: str) -> tuple[Any, Any, socket.socket]:
    """Engine.IO's WebSocket wrapper as SocketChurn's server uses it, around a
    simple-websocket connection with no reader thread, and the peer's socket.

    ``state`` is ``"open"``, or ``"closed"``: the reader has just answered the
    client's close frame but not yet marked the connection closed.
    """
    from simple_websocket.ws import Base
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    if state == "closed":
        server.receive_data(client.send(CloseConnection(code=1000)))
        (close,) = server.events()
        assert isinstance(close, CloseConnection)
        server.send(close.response())
    ours, theirs = socket.socketpair()
    connection = object.__new__(Base)
    connection.__dict__.update(
        sock=ours,
        ws=server,
        connected=True,
        input_buffer=[],
        event=threading.Event(),
        close_reason=None,
        close_message=None,
        thread=threading.Thread(target=lambda: None),  # the reader, never started
    )
    wrapper = object.__new__(_upstream.ClosingOnceWebSocket)
    wrapper.ws = connection
    return wrapper, connection, theirs


@pytest.mark.parametrize("state", ["open", "closed"])
def test_closing_the_server_websocket_wakes_the_request_thread_and_never_raises(
    state: str,
) -> None:
    wrapper, connection, peer = _server_websocket(state)
    received: list[object] = []
    waiter = threading.Thread(target=lambda: received.append(wrapper.wait()))
    try:
        waiter.start()
        # Give the request thread time to block waiting for the next message
        # (there is none): nothing signals that it has.
        assert not connection.event.wait(0.05)
        assert waiter.is_alive()

        wrapper.close()  # raised LocalProtocolError when "closed"

        # Woken, it sees the connection closed -- with simple-websocket's own
        # close() it kept waiting, for good once the reader had left.
        waiter.join(5)
        assert not waiter.is_alive()
        assert received == [None]
        assert connection.connected is False
    finally:
        connection.connected = False
        connection.event.set()
        waiter.join(5)
        connection.sock.close()
        peer.close()


def test_socket_churn_of_100_clients() -> None:
    chat = ChatApp()
    churn = SocketChurnRunner()
    assert churn.clients == 100

    started = time.perf_counter()
    result = churn.run(chat.app, chat.socketio, on_connect=_say_hello)
    elapsed = time.perf_counter() - started

    print(
        f"\nSocketChurn: {result.runs} clients, concurrency {result.concurrency}: "
        f"churn {result.seconds:.2f}s, run() total {elapsed:.2f}s"
    )
    assert len(chat.connected) == 100
    assert sorted(chat.disconnected) == sorted(chat.connected)
    assert chat.tasks_done == 100


# -- HttpLoad -----------------------------------------------------------------------


class ShopApp:
    """A tiny Flask app that counts its teardown_request calls."""

    def __init__(self) -> None:
        self.app = flask.Flask(__name__)
        self.lock = threading.Lock()
        self.teardowns = 0

        @self.app.route("/ok")
        def ok() -> str:
            return "ok"

        @self.app.route("/echo", methods=["POST"])
        def echo() -> Any:
            return flask.request.get_data(), 201

        @self.app.teardown_request
        def count_teardown(exc: BaseException | None) -> None:
            with self.lock:
                self.teardowns += 1


def test_http_load_counts_statuses_and_waits_for_teardown() -> None:
    shop = ShopApp()

    result = HttpLoadRunner(requests=200, concurrency=20).run(shop.app, "/ok")

    assert result.statuses == {200: 200}
    assert sum(result.statuses.values()) + result.failures == 200
    assert result.failures == 0
    assert shop.teardowns == 200
    assert (result.kind, result.runs, result.concurrency) == ("http", 200, 20)
    assert result.requests_per_second > 0
    latency = result.latency_ms
    assert latency is not None
    assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max
    data = json.loads(json.dumps(result.as_dict()))
    assert data["statuses"] == {"200": 200}
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "max"}


def test_http_load_counts_404s() -> None:
    shop = ShopApp()

    result = HttpLoadRunner(requests=50, concurrency=10).run(shop.app, "/no-such-page")

    assert result.statuses == {404: 50}
    assert shop.teardowns == 50


def test_http_load_sends_method_headers_and_body() -> None:
    shop = ShopApp()

    result = HttpLoadRunner(requests=10, concurrency=5).run(
        shop.app, "/echo", method="POST", headers={"Content-Type": "text/plain"}, body="hé"
    )

    assert result.statuses == {201: 10}


def test_http_load_joins_request_threads_that_outlive_the_response() -> None:
    # close() of a WSGI response runs in the server's request thread after the client
    # already has the whole response: only joining the threads makes this exact.
    lock = threading.Lock()
    closed = 0

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"done"

        def close(self) -> None:
            nonlocal closed
            with lock:
                closed += 1

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Length", "4")])
        return Body()

    result = HttpLoadRunner(requests=300, concurrency=30).run(app, "/")

    assert result.statuses == {200: 300}
    assert closed == 300


def test_http_load_counts_dropped_connections_as_failures() -> None:
    def rude_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # Hang up without answering.
        environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
        start_response("200 OK", [])
        return [b"never sent"]

    result = HttpLoadRunner(requests=10, concurrency=5).run(rude_app, "/")

    assert result.failures == 10
    assert result.statuses == {}
    assert result.latency_ms is None
    assert result.failure_samples
    json.dumps(result.as_dict())


def test_http_load_default_1000_requests_50_at_a_time() -> None:
    shop = ShopApp()
    load = HttpLoadRunner()
    assert (load.requests, load.concurrency) == (1000, 50)

    started = time.perf_counter()
    result = load.run(shop.app, "/ok")
    elapsed = time.perf_counter() - started

    latency = result.latency_ms
    assert latency is not None
    print(
        f"\nHttpLoad: {result.runs} requests, concurrency {result.concurrency}: "
        f"{result.seconds:.2f}s ({result.requests_per_second:.0f} req/s, "
        f"p50 {latency.p50:.1f} ms, p90 {latency.p90:.1f} ms, p99 {latency.p99:.1f} ms, "
        f"max {latency.max:.1f} ms), run() total {elapsed:.2f}s"
    )
    assert result.statuses == {200: 1000}
    assert shop.teardowns == 1000


# -- serve_wsgi ---------------------------------------------------------------------


def test_serve_wsgi_serves_and_stops() -> None:
    shop = ShopApp()

    with serve_wsgi(shop.app) as (host, port):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("GET", "/ok")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
        finally:
            connection.close()

    assert host == "127.0.0.1"
    assert shop.teardowns == 1
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), 1):
        pass


def test_serve_wsgi_reports_request_threads_it_cannot_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsgi, "FORCED_EXIT_GRACE", 0.1)
    entered = threading.Event()
    release = threading.Event()

    def stuck_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.set()
        release.wait(30)  # blocked on something other than its socket
        start_response("200 OK", [])
        return [b""]

    def request(host: str, port: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # the server shuts this connection down
        finally:
            connection.close()

    client: threading.Thread | None = None

    def serve_a_stuck_request() -> None:
        nonlocal client
        with serve_wsgi(stuck_app, join_timeout=0.2) as (host, port):
            client = threading.Thread(target=request, args=(host, port))
            client.start()
            assert entered.wait(10)

    try:
        with pytest.raises(StressError, match="still running"):
            serve_a_stuck_request()
    finally:
        release.set()
        if client is not None:
            client.join(10)
        for thread in threading.enumerate():
            if thread.name.startswith("dbleak-wsgi-request"):
                thread.join(10)
