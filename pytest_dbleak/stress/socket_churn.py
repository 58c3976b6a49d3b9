"""The Socket.IO churn runner: many real clients connect to a Flask-SocketIO app and leave."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socketio.exceptions import ConnectionError as SocketIOConnectionError

from pytest_dbleak.stress import _upstream
from pytest_dbleak.stress._common import (
    SocketChurnError,
    SocketChurnResult,
    join_all,
    names,
    require_positive,
)
from pytest_dbleak.stress._server_hooks import SocketIOServerHooks
from pytest_dbleak.stress.wsgi import serve_wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from flask_socketio import SocketIO
    from socketio import Client as SocketIOClient

_log = logging.getLogger(__name__)


class _ChurnOutcome:
    """Thread-safe collection of what the churn workers found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sids: list[str] = []
        self.errors: list[SocketChurnError] = []
        self.problems: list[str] = []

    def connected(self, sid: str) -> None:
        with self._lock:
            self.sids.append(sid)

    def failed(self, error: SocketChurnError) -> None:
        with self._lock:
            self.errors.append(error)

    def problem(self, message: str) -> None:
        with self._lock:
            self.problems.append(message)


class SocketChurnRunner:
    """Connect and disconnect many real Socket.IO clients to a Flask-SocketIO app.

    The application is served on a loopback port by Werkzeug's threaded server
    (see :func:`serve_wsgi`); the ``SocketIO`` instance must use
    ``async_mode="threading"``.  ``concurrency`` worker threads each take
    clients one after another: connect a python-socketio client over
    WebSocket, call ``on_connect(client)``, disconnect.  Connects and
    disconnects of different clients therefore overlap, and at most
    ``concurrency`` clients are connected at once.

    :meth:`run` returns only when, for every client that connected, the
    application's disconnect handler has returned, every background task the
    server started meanwhile (``socketio.start_background_task``, event
    handlers) has ended, and the server and all its threads are gone.

    Args:
        clients: Number of clients to churn.
        concurrency: Number of clients in flight at once.
        connect_timeout: Seconds a client may take to connect (WebSocket
            handshake, then namespace connection), and its threads may take to
            end once it has disconnected.
        timeout: Seconds the server may take, after the last client left, to
            finish disconnect handlers and background tasks, and again to
            stop its threads.
    """

    def __init__(
        self,
        clients: int = 100,
        concurrency: int = 10,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        require_positive(
            clients=clients,
            concurrency=concurrency,
            connect_timeout=connect_timeout,
            timeout=timeout,
        )
        self.clients = clients
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def run(
        self,
        app: WSGIApplication,
        socketio: SocketIO,
        *,
        namespace: str = "/",
        auth: Any = None,
        on_connect: Callable[[SocketIOClient], object] | None = None,
    ) -> SocketChurnResult:
        """Churn ``clients`` clients through ``namespace`` of ``socketio``'s server.

        Args:
            app: The WSGI application to serve -- the Flask app that
                ``socketio`` was initialised with (its ``wsgi_app`` carries
                the Socket.IO middleware).
            socketio: The ``flask_socketio.SocketIO`` instance.
            namespace: Namespace every client connects to.
            auth: Passed to ``client.connect(auth=...)``.
            on_connect: Called with each connected client, in the client's
                worker thread, before it disconnects; may emit events.

        Raises:
            ValueError: ``socketio`` is not initialised or not in threading mode.
            SocketChurnError: See the class documentation; clients already
                connected are still disconnected and awaited first.
        """
        server = _threading_socketio_server(socketio)
        threads_before = set(threading.enumerate())
        outcome = _ChurnOutcome()
        hooks = SocketIOServerHooks(server)
        hooks.install()
        seconds = 0.0
        try:
            with serve_wsgi(
                app, join_timeout=self.timeout, handler=_upstream.WebSocketRequestHandler
            ) as (host, port):
                url = f"http://{host}:{port}"
                started = time.perf_counter()
                self._churn(url, namespace, auth, on_connect, outcome)
                seconds = time.perf_counter() - started
                self._await_server(hooks, namespace, outcome)
                _raise_if_failed(outcome, hooks)
        except BaseException:
            # Clean up what can be cleaned up, and let the original error propagate.
            reported = len(outcome.problems)
            self._finish(hooks, threads_before, outcome)
            for message in outcome.problems[reported:]:
                _log.error("SocketChurnRunner: %s", message)
            raise
        self._finish(hooks, threads_before, outcome)
        _raise_if_failed(outcome, hooks)
        _log.debug("SocketChurnRunner: %d clients in %.3fs", self.clients, seconds)
        return SocketChurnResult(
            kind="socketio",
            runs=self.clients,
            seconds=seconds,
            concurrency=self.concurrency,
            disconnects=hooks.disconnects,
            server_tasks=hooks.task_count,
        )

    def _churn(
        self,
        url: str,
        namespace: str,
        auth: Any,
        on_connect: Callable[[SocketIOClient], object] | None,
        outcome: _ChurnOutcome,
    ) -> None:
        indices = iter(range(self.clients))
        indices_lock = threading.Lock()
        stop = threading.Event()  # set on the first failure: start no new clients

        def next_index() -> int | None:
            with indices_lock:
                return next(indices, None)

        def worker() -> None:
            while not stop.is_set() and (index := next_index()) is not None:
                try:
                    sid = self._churn_one(index, url, namespace, auth, on_connect, outcome)
                except SocketChurnError as exc:
                    outcome.failed(exc)
                    stop.set()
                    return
                except BaseException:
                    stop.set()
                    raise
                outcome.connected(sid)

        workers = min(self.concurrency, self.clients)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="dbleak-churn"
        ) as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
        for future in futures:
            future.result()  # unexpected errors (bugs) propagate once every worker is done

    def _churn_one(
        self,
        index: int,
        url: str,
        namespace: str,
        auth: Any,
        on_connect: Callable[[SocketIOClient], object] | None,
        outcome: _ChurnOutcome,
    ) -> str:
        label = f"Socket.IO client {index + 1} of {self.clients}"
        client = _upstream.ChurnClient(
            # A reconnecting client would start threads of its own after a failure.
            reconnection=False,
            # Otherwise the first client made on the main thread installs a SIGINT handler.
            handle_sigint=False,
            request_timeout=self.connect_timeout,
        )
        refusals: list[object] = []
        client.on("connect_error", refusals.append, namespace=namespace)
        try:
            client.connect(
                url,
                namespaces=[namespace],
                transports=["websocket"],
                auth=auth,
                wait_timeout=self.connect_timeout,
            )
        except SocketIOConnectionError as exc:
            self._join_client_threads(client, label, outcome)
            said = f"; the server said {refusals[-1]!r}" if refusals else ""
            raise SocketChurnError(
                f"{label} could not connect to {url} (namespace {namespace!r}): {exc}{said}"
            ) from exc
        sid = client.get_sid(namespace)
        try:
            if on_connect is not None:
                try:
                    on_connect(client)
                except Exception as exc:
                    raise SocketChurnError(
                        f"on_connect raised for {label} (sid {sid}): {exc!r}"
                    ) from exc
        finally:
            client.disconnect()
            self._join_client_threads(client, label, outcome)
        return str(sid)

    def _join_client_threads(self, client: Any, label: str, outcome: _ChurnOutcome) -> None:
        # Engine.IO's read loop joins the writer, and disconnect() joins the
        # read loop; join both here anyway so none is still winding down.
        loops = _upstream.client_threads(client)
        alive = join_all(loops, time.monotonic() + self.connect_timeout)
        if alive:
            outcome.problem(
                f"{label}: client threads still running after disconnect: {names(alive)}"
            )

    def _await_server(
        self, hooks: SocketIOServerHooks, namespace: str, outcome: _ChurnOutcome
    ) -> None:
        deadline = time.monotonic() + self.timeout
        missing = hooks.wait_for_disconnects(namespace, outcome.sids, deadline)
        if missing:
            outcome.problem(
                f"the disconnect handler had not returned for {len(missing)} of "
                f"{len(outcome.sids)} client(s) after {self.timeout:.1f}s: "
                f"{', '.join(sorted(missing)[:5])}"
            )
        stuck = hooks.join_tasks(deadline)
        if stuck:
            outcome.problem(
                f"{len(stuck)} server background task(s) still running "
                f"{self.timeout:.1f}s after the last client left: {names(stuck)}"
            )

    def _finish(
        self,
        hooks: SocketIOServerHooks,
        threads_before: set[threading.Thread],
        outcome: _ChurnOutcome,
    ) -> None:
        """Restore the server and join what it left (the WSGI server is already closed)."""
        deadline = time.monotonic() + self.timeout
        # Tasks started while the server shut down, e.g. by a request thread's teardown.
        stuck = hooks.join_tasks(deadline)
        if stuck:
            outcome.problem(f"server background task(s) still running: {names(stuck)}")
        pings = hooks.uninstall(deadline)
        if pings:
            outcome.problem(f"Engine.IO ping timer(s) still running: {names(pings)}")
        # simple-websocket's reader of each connection ends once the connection is
        # closed; join it so it cannot outlive run().
        readers = [t for t in _upstream.websocket_readers() if t not in threads_before]
        readers = join_all(readers, deadline)
        if readers:
            outcome.problem(f"WebSocket reader thread(s) still running: {names(readers)}")


def _threading_socketio_server(socketio: Any) -> Any:
    server = getattr(socketio, "server", None)
    if server is None or not hasattr(server, "eio"):
        raise ValueError(
            "the SocketIO instance has no server yet: create it with "
            "SocketIO(app, async_mode='threading') or call init_app(app) first"
        )
    mode = getattr(server, "async_mode", None)
    if mode != "threading":
        raise ValueError(
            f"SocketChurnRunner needs a SocketIO instance with async_mode='threading', got {mode!r}"
        )
    return server


def _raise_if_failed(outcome: _ChurnOutcome, hooks: SocketIOServerHooks) -> None:
    """Raise the first client error, else a summary of server-side failures and problems."""
    if outcome.errors:
        for other in outcome.errors[1:]:
            _log.warning("SocketChurnRunner: also failed: %s", other)
        raise outcome.errors[0]
    failures = hooks.failures
    if failures or outcome.problems:
        lines = [f"{what} raised {exc!r}" for what, exc in failures] + outcome.problems
        error = SocketChurnError("Socket.IO churn failed: " + "; ".join(lines))
        if failures:
            raise error from failures[0][1]
        raise error
