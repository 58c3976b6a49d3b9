"""Stress runners behind pytest-dbleak's stress markers and fixtures.

A connection leak that happens on one run in twenty, or only when two requests
overlap, rarely shows in a single test call.  These runners repeat the code
under test many times, concurrently, against real servers on the loopback
interface, and do not return until everything they started has finished -- so
that the leak check that follows sees the final state, not a request thread
that is still tearing down.

* :class:`JobStress` runs plain callables (scheduled jobs, CLI commands) many
  times from a thread pool.
* :class:`SocketChurn` connects and disconnects many real Socket.IO clients to
  a Flask-SocketIO application.
* :class:`HttpLoad` sends many concurrent HTTP requests to a WSGI application
  (``ab -n N -c C`` style).

:func:`serve_wsgi` is the one way these runners start and stop a loopback
server.  This module only needs the standard library to import; Werkzeug
(``serve_wsgi``, ``HttpLoad``) and Flask-SocketIO / python-socketio
(``SocketChurn``) are imported when first used (the ``stress`` extra).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import http.client
import itertools
import logging
import math
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from flask_socketio import SocketIO
    from socketio import Client as SocketIOClient

__all__ = [
    "HttpLoad",
    "HttpLoadResult",
    "JobStress",
    "LatencyMs",
    "SocketChurn",
    "SocketChurnError",
    "SocketChurnResult",
    "StressError",
    "StressResult",
    "serve_wsgi",
]

_log = logging.getLogger(__name__)

#: Address every runner serves on.
LOOPBACK = "127.0.0.1"

# socketserver only notices shutdown() between select() calls, so this bounds
# how long stopping a server takes.
_POLL_INTERVAL = 0.05

# After a server has forcibly shut down the sockets of request threads that
# overran their deadline, how long those threads get to notice and exit.
_FORCED_EXIT_GRACE = 2.0

_UNSET = object()

# How often a wait that is normally woken by a notification re-checks that the
# thread expected to notify it is still alive.
_LIVENESS_CHECK = 0.05


class StressError(RuntimeError):
    """A stress run could not finish cleanly.

    Raised when server threads are still running after their deadline, or
    (as :class:`SocketChurnError`) when a Socket.IO churn fails.
    """


class SocketChurnError(StressError):
    """A Socket.IO churn failed.

    A client could not connect, ``on_connect`` raised, a server-side
    disconnect handler or background task raised, or the server had not
    settled (disconnects handled, tasks ended, threads joined) by the
    deadline.  When the failure has an underlying exception it is chained as
    ``__cause__``.
    """


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StressResult:
    """What a stress run did.

    Attributes:
        kind: Which runner produced it: ``"jobs"``, ``"socketio"`` or ``"http"``.
        runs: Total operations performed (calls, clients or requests).
        seconds: Wall-clock time of the operations, excluding server start-up
            and the final teardown waits.
        concurrency: How many operations could run at once (threads,
            concurrent clients, concurrent requests).
    """

    kind: str
    runs: int
    seconds: float
    concurrency: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SocketChurnResult(StressResult):
    """Result of :meth:`SocketChurn.run`.

    Attributes:
        disconnects: Server-side disconnect events handled during the run.
        server_tasks: Server background tasks (Socket.IO event handlers, tasks
            the application started, Engine.IO writers) that were awaited,
            not counting Engine.IO's per-connection ping timers.
    """

    disconnects: int
    server_tasks: int


@dataclasses.dataclass(frozen=True)
class LatencyMs:
    """Latency percentiles in milliseconds (nearest-rank method)."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclasses.dataclass(frozen=True)
class HttpLoadResult(StressResult):
    """Result of :meth:`HttpLoad.run`.

    Attributes:
        statuses: HTTP status code -> number of responses with that status.
        failures: Requests that got no HTTP response (connection refused or
            reset, timeout, malformed response).
        requests_per_second: Responses received per second of ``seconds``.
        latency_ms: Percentiles over the requests that got a response, from
            opening the connection to reading the last byte of the body;
            ``None`` when no request got a response.
        failure_samples: The first few distinct failure messages.
    """

    statuses: dict[int, int]
    failures: int
    requests_per_second: float
    latency_ms: LatencyMs | None
    failure_samples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict (status codes become string keys)."""
        data = super().as_dict()
        # JSON object keys are strings; convert here so a JSON round trip is stable.
        data["statuses"] = {str(code): count for code, count in sorted(self.statuses.items())}
        data["failure_samples"] = list(self.failure_samples)
        return data


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _join_all(threads: Iterable[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join ``threads`` until ``deadline`` (``time.monotonic()``); return those still alive."""
    threads = list(threads)
    for thread in threads:
        thread.join(_remaining(deadline))
    return [thread for thread in threads if thread.is_alive()]


def _names(threads: Iterable[threading.Thread]) -> str:
    return ", ".join(sorted(thread.name for thread in threads))


# --------------------------------------------------------------------------
# Loopback WSGI server
# --------------------------------------------------------------------------


@functools.cache
def _joining_server_class() -> type[Any]:
    """Build the server class on first use so that importing this module does not need Werkzeug."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class _RequestHandler(WSGIRequestHandler):
        # What make_server(threaded=True) would set; declared here so Werkzeug
        # does not assign it onto a handler class at runtime.
        protocol_version = "HTTP/1.1"

        def connection_dropped(
            self, error: BaseException, environ: dict[str, Any] | None = None
        ) -> None:
            # Engine.IO ends a WebSocket session under Werkzeug by raising
            # ConnectionError (simple-websocket's "werkzeug" mode).  The upgrade
            # request was HTTP/1.1 without "Connection: close" and no response
            # went through Werkzeug, so BaseHTTPRequestHandler would treat the
            # socket as keep-alive and block reading a "next request" from it
            # until the client hangs up.  The client, meanwhile, waits in
            # websocket-client's close() for the socket to end -- up to 3 s.
            # A dropped connection is finished: close it now.
            self.close_connection = True
            super().connection_dropped(error, environ)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # One INFO line per request from Werkzeug would flood a 1000-request run.
            _log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)

    class _JoiningWSGIServer(ThreadedWSGIServer):
        """Werkzeug's threaded server, but it joins its request threads on close.

        Werkzeug sets ``daemon_threads = True``, and socketserver only tracks
        (and joins in ``server_close()``) non-daemon threads, so by default a
        request thread -- and the teardown handlers it runs -- may still be
        running after the server is closed.  Request threads stay daemon
        threads here (a wedged handler must not block interpreter exit) but
        are tracked and joined with a deadline.
        """

        def __init__(self, host: str, port: int, app: WSGIApplication, join_timeout: float):
            super().__init__(host, port, app, handler=_RequestHandler)
            self.join_timeout = join_timeout
            #: Names of request threads still running after server_close().
            self.leftover_threads: list[str] = []
            self._connections: dict[threading.Thread, socket.socket] = {}
            self._connections_lock = threading.Lock()
            self._thread_numbers = itertools.count(1)

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            # Skip BaseWSGIServer.serve_forever: it calls server_close() from
            # the serving thread, while serve_wsgi() closes the server from the
            # caller's thread so that it can report request threads that overran.
            socketserver.BaseServer.serve_forever(self, poll_interval)

        def process_request(self, request: Any, client_address: Any) -> None:
            thread = threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name=f"dbleak-wsgi-request-{next(self._thread_numbers)}",
                daemon=True,
            )
            with self._connections_lock:
                # Drop finished threads so a long-lived server does not accumulate them.
                for done in [t for t in self._connections if t.ident and not t.is_alive()]:
                    del self._connections[done]
                self._connections[thread] = request
            try:
                thread.start()
            except BaseException:
                with self._connections_lock:
                    self._connections.pop(thread, None)
                raise

        def shutdown_request(self, request: Any) -> None:
            # SHUT_RDWR rather than socketserver's SHUT_WR: besides sending FIN it
            # wakes any other thread blocked in recv() on this connection
            # (simple-websocket's reader), so none outlives its request.
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
            self.close_request(request)

        def server_close(self) -> None:
            """Close the listening socket, then join request threads (bounded by ``join_timeout``).

            Threads still running at the deadline get their connection shut
            down, which ends blocking reads in handlers and WebSocket readers,
            and a short grace period; any left after that are recorded in
            :attr:`leftover_threads`.
            """
            super().server_close()
            with self._connections_lock:
                connections = dict(self._connections)
            alive = _join_all(connections, time.monotonic() + self.join_timeout)
            if alive:
                _log.warning(
                    "%d server request thread(s) still running after %.1fs; "
                    "shutting their connections down: %s",
                    len(alive),
                    self.join_timeout,
                    _names(alive),
                )
                for thread in alive:
                    with contextlib.suppress(OSError):
                        connections[thread].shutdown(socket.SHUT_RDWR)
                alive = _join_all(alive, time.monotonic() + _FORCED_EXIT_GRACE)
            with self._connections_lock:
                for thread in connections:
                    if not thread.is_alive():
                        self._connections.pop(thread, None)
            self.leftover_threads = [thread.name for thread in alive]

    return _JoiningWSGIServer


@contextlib.contextmanager
def serve_wsgi(
    app: WSGIApplication, *, host: str = LOOPBACK, join_timeout: float = 10.0
) -> Iterator[tuple[str, int]]:
    """Serve ``app`` on ``host`` at a free port with Werkzeug's threaded server.

    Yields ``(host, port)``.  On exit the server stops accepting, then every
    request thread it started is joined, so teardown code that runs at the end
    of a request (Flask ``teardown_request``/``teardown_appcontext``, WebSocket
    sessions) has finished when the ``with`` block is left.

    The server is what ``werkzeug.serving.make_server(host, 0, app,
    threaded=True)`` builds, with two changes: request threads are joined on
    close, and a connection whose handler reported it dropped (how a
    WebSocket session ends under Werkzeug) is closed instead of being kept
    alive for another request.

    Raises:
        StressError: If request threads are still running ``join_timeout``
            seconds after the block ends (plus a short grace period after
            their connections are shut down).  When the block itself raised,
            this is logged instead so the original exception propagates.
    """
    _require_positive(join_timeout=join_timeout)
    server = _joining_server_class()(host, 0, app, join_timeout)
    serving = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL},
        name=f"dbleak-wsgi-server-{server.server_port}",
        daemon=True,
    )
    try:
        serving.start()
    except BaseException:
        server.server_close()
        raise
    body_failed = False
    try:
        yield host, server.server_port
    except BaseException:
        body_failed = True
        raise
    finally:
        server.shutdown()  # returns once serve_forever() has left its loop
        serving.join()
        server.server_close()
        if server.leftover_threads:
            message = (
                f"{len(server.leftover_threads)} request thread(s) of the server on "
                f"{host}:{server.server_port} still running after "
                f"{join_timeout:.1f}s: {', '.join(server.leftover_threads)}"
            )
            if body_failed:
                _log.error("%s", message)
            else:
                raise StressError(message)


# --------------------------------------------------------------------------
# JobStress
# --------------------------------------------------------------------------


class JobStress:
    """Call jobs many times from a thread pool, as a threaded job scheduler would.

    Each callable passed to :meth:`run` is called ``runs`` times by a
    :class:`concurrent.futures.ThreadPoolExecutor` with ``threads`` workers
    (what APScheduler's ``ThreadPoolExecutor`` executor uses), so calls of the
    same and of different callables overlap.

    Args:
        runs: How many times each callable is called.
        threads: Number of worker threads.
    """

    def __init__(self, runs: int = 100, threads: int = 4) -> None:
        _require_positive(runs=runs, threads=threads)
        self.runs = runs
        self.threads = threads

    def run(self, *callables: Callable[[], object]) -> StressResult:
        """Call each callable ``runs`` times and wait for every call to finish.

        Calls are submitted round-robin (``a, b, a, b, ...``) so different
        jobs interleave.  All calls run even when some fail; then the
        exception raised first (in time) is re-raised -- the original object,
        with its traceback, ``__cause__`` and ``__context__``.

        Returns:
            A :class:`StressResult` with ``kind="jobs"`` and
            ``runs == len(callables) * runs``.
        """
        if not callables:
            raise ValueError("JobStress.run() needs at least one callable")
        for job in callables:
            if not callable(job):
                raise TypeError(f"JobStress.run() arguments must be callable, got {job!r}")

        first_error: list[BaseException] = []
        lock = threading.Lock()

        def call(job: Callable[[], object]) -> None:
            try:
                job()
            except BaseException as exc:
                # Futures complete in no useful order; record which failure came first.
                with lock:
                    if not first_error:
                        first_error.append(exc)
                raise

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="dbleak-job"
        ) as pool:
            futures = [pool.submit(call, job) for _ in range(self.runs) for job in callables]
            concurrent.futures.wait(futures)
        # Leaving the with block shut the pool down and joined its threads.
        seconds = time.perf_counter() - started
        total = len(futures)
        del futures  # the failed futures hold the exceptions and, through them, their frames

        if first_error:
            error = first_error.pop()
            try:
                raise error
            finally:
                # Do not keep the failing frames (and whatever they hold) alive from here.
                del error
        _log.debug("JobStress: %d calls on %d threads in %.3fs", total, self.threads, seconds)
        return StressResult(kind="jobs", runs=total, seconds=seconds, concurrency=self.threads)


# --------------------------------------------------------------------------
# SocketChurn
# --------------------------------------------------------------------------


@functools.cache
def _churn_client_class() -> type[SocketIOClient]:
    """Build the Socket.IO client class on first use (python-socketio is optional)."""
    import engineio
    import socketio

    class _OrderlyEngineIOClient(engineio.Client):
        """Engine.IO client whose WebSocket disconnect is orderly and prompt.

        ``engineio.Client.disconnect()`` queues CLOSE for its writer thread and
        then, from the calling thread, immediately calls websocket-client's
        ``WebSocket.close()``.  That close frame can overtake packets still in
        the queue -- the Socket.IO DISCONNECT, events just emitted -- and the
        server then sees a dropped transport instead of a client leaving.
        Here the queue is flushed first and the close frame is sent only after
        the writer has written CLOSE and exited.
        """

        #: Upper bound for flushing the send queue and for the writer to exit.
        flush_timeout = 5.0

        def disconnect(self, abort: bool = False, reason: Any = None) -> None:
            ws = getattr(self, "ws", None)
            if not abort and self.state == "connected" and self.current_transport == "websocket":
                if not self._flush_send_queue(self.flush_timeout):
                    _log.warning(
                        "Engine.IO client %s: send queue not flushed before disconnect", self.sid
                    )
                self._close_websocket_after_writer()
            super().disconnect(abort=abort, reason=reason)
            reader = getattr(self, "read_loop_task", None)
            if ws is not None and (reader is None or not reader.is_alive()):
                # websocket-client's close() does nothing once the read loop has
                # answered the server's close frame (that marks the WebSocket "not
                # connected"), which leaves the socket to the garbage collector.
                # Nothing reads it any more: close it.
                ws.shutdown()

        def _flush_send_queue(self, timeout: float) -> bool:
            # The writer calls task_done() for each packet it has written.
            pending = self.queue
            all_done = getattr(pending, "all_tasks_done", None)
            if all_done is None:
                return True
            deadline = time.monotonic() + timeout
            with all_done:
                while pending.unfinished_tasks:
                    writer = self.write_loop_task
                    if writer is None or not writer.is_alive():
                        return False  # the connection broke; nothing will drain it
                    if time.monotonic() >= deadline:
                        return False
                    # Woken by task_done(); the timeout only re-checks the writer is alive.
                    all_done.wait(min(_LIVENESS_CHECK, _remaining(deadline)))
            return True

        def _close_websocket_after_writer(self) -> None:
            ws = getattr(self, "ws", None)
            writer = self.write_loop_task
            if ws is None or writer is None:
                return
            close = ws.close
            timeout = self.flush_timeout

            def close_after_writer(*args: Any, **kwargs: Any) -> None:
                # disconnect() has queued CLOSE and the writer's stop sentinel
                # by the time it calls ws.close(); let the writer send them.
                writer.join(timeout)
                close(*args, **kwargs)

            ws.close = close_after_writer

    class _ChurnClient(socketio.Client):
        def _engineio_client_class(self) -> type[Any]:
            return _OrderlyEngineIOClient

    return _ChurnClient


@functools.cache
def _closing_once_websocket_class(base: type[Any]) -> type[Any]:
    """Subclass Engine.IO's simple-websocket WSGI wrapper so that its ``close()`` is safe.

    A server-side WebSocket session involves three threads: the request
    thread, which waits in ``ws.wait()`` for the next message; Engine.IO's
    writer thread, which ends the session with ``ws.close()``; and
    simple-websocket's reader thread, which receives frames, answers the
    client's close frame and hands messages to ``wait()`` by setting an event.
    ``close()`` has two races with the reader:

    * It checks ``connected`` (twice: the wrapper, then simple-websocket),
      then sends a close frame.  When the reader has just answered the
      client's close frame on the same wsproto connection, wsproto refuses
      the second close frame -- ``LocalProtocolError: ... cannot be sent in
      state CLOSED`` -- or, if the reader has also cleared ``connected``
      between the two checks, simple-websocket raises ``ConnectionClosed``;
      either way the writer task dies with it, although the close handshake
      is complete.  Here both are ignored (the first only when the connection
      is indeed closing or closed, and then it is marked closed, as
      ``close()`` does).
    * It clears ``connected`` but, unlike every other place in
      simple-websocket that does, does not set the event that ``wait()``
      blocks on (without a timeout).  If the reader, between two frames, then
      sees ``connected`` cleared, it leaves its loop and closes the socket
      without setting the event either, and the request thread waits forever
      -- shutting the connection down cannot wake it, the socket is already
      closed.  Here the event is set after closing.
    """
    from simple_websocket import ConnectionClosed
    from wsproto.connection import ConnectionState
    from wsproto.utilities import LocalProtocolError

    already_closing = (ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED)

    class _ClosingOnceWebSocket(base):
        def close(self) -> None:
            ws: Any = getattr(self, "ws", None)
            try:
                super().close()
            except ConnectionClosed:
                pass  # the reader marked it closed after the wrapper checked: nothing to do
            except LocalProtocolError:
                if getattr(getattr(ws, "ws", None), "state", None) not in already_closing:
                    raise
                ws.connected = False  # what close() would have done; the reader is about to
            finally:
                event = getattr(ws, "event", None)
                if event is not None:
                    event.set()  # wait() re-checks ``connected`` and returns

    _ClosingOnceWebSocket.__name__ = _ClosingOnceWebSocket.__qualname__ = (
        f"_ClosingOnce{base.__name__}"
    )
    return _ClosingOnceWebSocket


#: Methods of python-socketio's client manager that read or update its
#: bookkeeping (``rooms``, ``pending_connect``, ``pending_disconnect``,
#: ``callbacks``) and call no application code.  See
#: :meth:`_SocketIOServerHooks._serialise_manager`.
_MANAGER_METHODS = (
    "pre_connect",
    "connect",
    "is_pre_connected",
    "is_connected",
    "can_disconnect",
    "sid_from_eio_sid",
    "eio_sid_from_sid",
    "pre_disconnect",
    "disconnect",
    "basic_disconnect",
    "is_sid_room",
    "basic_enter_room",
    "basic_leave_room",
    "basic_close_room",
    "enter_room",
    "leave_room",
    "close_room",
    "get_rooms",
    "_generate_ack_id",
)


def _is_engineio_ping_task(target: object) -> bool:
    """Whether ``target`` is Engine.IO's per-connection ping timer (``Socket._send_ping``)."""
    owner = getattr(target, "__self__", None)
    return getattr(target, "__name__", None) == "_send_ping" and type(owner).__module__.startswith(
        "engineio."
    )


class _SocketIOServerHooks:
    """Instrument a python-socketio server for the duration of one churn.

    * ``eio.start_background_task`` is wrapped to track every thread the
      server starts (Socket.IO event handlers run in such tasks, and
      ``socketio.start_background_task`` ends up here too) and to record
      exceptions they raise.
    * ``eio.sleep`` is wrapped so that Engine.IO's per-connection ping timers,
      which otherwise sleep ``ping_interval`` (25 s) after their client has
      gone, can be woken when the churn is over.
    * ``server._trigger_event`` is wrapped to learn when the application's
      disconnect handler has returned for each sid.
    * Engine.IO's client-monitor task, started on the first connection and
      running until ``eio.shutdown()``, is kept from starting.

    And it closes two thread-safety gaps that a churn on a busy machine runs
    into, each of which would fail the churn for no fault of the application:

    * The client manager's bookkeeping methods are serialised (see
      :meth:`_serialise_manager`).
    * Engine.IO's WebSocket wrapper is replaced by one whose ``close()``
      tolerates a close handshake that simple-websocket's reader thread has
      just completed, and wakes the request thread waiting for the next
      message (see :func:`_closing_once_websocket_class`).

    :meth:`uninstall` restores every attribute exactly as it was.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._eio = server.eio
        self._cond = threading.Condition()
        self._tasks: list[threading.Thread] = []
        self._ping_tasks: list[threading.Thread] = []
        self._disconnected: set[tuple[str, str]] = set()
        self._failures: list[tuple[str, BaseException]] = []
        self._release_pings = threading.Event()
        self._thread_flags = threading.local()
        self._saved: list[tuple[object, str, bool, object]] = []
        self._saved_monitor_flag: object = _UNSET
        self._manager_lock = threading.RLock()
        self.disconnects = 0

    # -- install / uninstall ------------------------------------------------

    def install(self) -> None:
        try:
            self._original_start = self._patch(
                self._eio, "start_background_task", self._start_background_task
            )
            self._original_sleep = self._patch(self._eio, "sleep", self._sleep)
            self._original_trigger = self._patch(
                self._server, "_trigger_event", self._trigger_event
            )
            self._serialise_manager()
            self._patch_websocket_class()
            self._saved_monitor_flag = self._eio.start_service_task
            self._eio.start_service_task = False
        except BaseException:
            self._restore()
            raise

    def uninstall(self, deadline: float) -> list[threading.Thread]:
        """Wake and join the ping timers, then restore the server; return timers still alive."""
        try:
            self._release_pings.set()
            with self._cond:
                pings = list(self._ping_tasks)
            # Restore only after the timers are joined: one restored before it
            # reached sleep() would call the real sleep and linger for 25 s.
            return _join_all(pings, deadline)
        finally:
            self._restore()

    def _patch(self, obj: object, name: str, replacement: object) -> Any:
        had_own = name in vars(obj)
        original = getattr(obj, name)
        self._saved.append((obj, name, had_own, vars(obj).get(name)))
        setattr(obj, name, replacement)
        return original

    def _restore(self) -> None:
        while self._saved:
            obj, name, had_own, value = self._saved.pop()
            if had_own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        if self._saved_monitor_flag is not _UNSET:
            self._eio.start_service_task = self._saved_monitor_flag
            self._saved_monitor_flag = _UNSET

    def _serialise_manager(self) -> None:
        """Run the client manager's bookkeeping methods one at a time.

        python-socketio's in-memory manager keeps ``rooms``,
        ``pending_connect`` and ``pending_disconnect`` in plain dicts of lists
        and bidicts with no lock, and deletes a namespace's entry when its last
        member leaves -- check-then-act sequences that interleave when connects
        and disconnects run on different threads, as they do in threading mode.
        One thread deletes ``pending_connect['/']`` (its list just became
        empty) between another's ``'/' in pending_connect`` and
        ``pending_connect['/']``: ``KeyError: '/'`` from ``pre_connect()``,
        ``connect()``, ``is_connected()``, ``pre_disconnect()`` or
        ``basic_disconnect()``, raised inside Engine.IO's message or
        disconnect handler, which logs it and moves on.  Raised from
        ``is_connected()`` in ``_handle_disconnect``, the application's
        disconnect handler never runs (SocketChurn then reports that it "had
        not returned"); from ``pre_connect()``, the client cannot connect.
        Lost updates can also drop a sid from, or leave one in, these books.
        Each method (none of which calls application code) is wrapped to hold
        one re-entrant lock; ``get_participants`` and ``get_namespaces``,
        which return lazy views, return snapshots taken under it.
        """
        manager = self._server.manager
        lock = self._manager_lock

        def locked(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(*args: Any, **kwargs: Any) -> Any:
                with lock:
                    return method(*args, **kwargs)

            return call

        def snapshot(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(*args: Any, **kwargs: Any) -> Any:
                with lock:
                    return iter(list(method(*args, **kwargs)))

            return call

        for name in _MANAGER_METHODS:
            if callable(getattr(manager, name, None)):
                self._patch(manager, name, locked(getattr(manager, name)))
        for name in ("get_participants", "get_namespaces"):
            if callable(getattr(manager, name, None)):
                self._patch(manager, name, snapshot(getattr(manager, name)))

    def _patch_websocket_class(self) -> None:
        async_drivers = getattr(self._eio, "_async", None)
        if not isinstance(async_drivers, dict):
            return
        websocket_class = async_drivers.get("websocket")
        if not isinstance(websocket_class, type) or websocket_class.__name__ != (
            "SimpleWebSocketWSGI"
        ):
            return
        # A copy: the driver table is the async driver module's, shared by every server.
        self._patch(
            self._eio,
            "_async",
            {**async_drivers, "websocket": _closing_once_websocket_class(websocket_class)},
        )

    # -- wrappers -----------------------------------------------------------

    def _start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        is_ping = _is_engineio_ping_task(target)

        @functools.wraps(target)  # keeps the thread named after the real target
        def run_task() -> None:
            self._thread_flags.wakeable_sleep = is_ping
            try:
                target(*args, **kwargs)
            except Exception as exc:
                self._record_failure(
                    f"server background task {threading.current_thread().name}", exc
                )
                raise

        task = self._original_start(run_task)
        with self._cond:
            (self._ping_tasks if is_ping else self._tasks).append(task)
        return task

    def _sleep(self, seconds: float = 0) -> None:
        if getattr(self._thread_flags, "wakeable_sleep", False):
            self._release_pings.wait(seconds)
        else:
            self._original_sleep(seconds)

    def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event != "disconnect":
            return self._original_trigger(event, namespace, *args)
        sid = args[0] if args else None
        try:
            return self._original_trigger(event, namespace, *args)
        except Exception as exc:
            self._record_failure(f"disconnect handler for sid {sid} (namespace {namespace!r})", exc)
            raise
        finally:
            with self._cond:
                self._disconnected.add((namespace or "/", str(sid)))
                self.disconnects += 1
                self._cond.notify_all()

    def _record_failure(self, what: str, exc: BaseException) -> None:
        with self._cond:
            self._failures.append((what, exc))

    # -- waits --------------------------------------------------------------

    @property
    def failures(self) -> list[tuple[str, BaseException]]:
        with self._cond:
            return list(self._failures)

    @property
    def task_count(self) -> int:
        with self._cond:
            return len(self._tasks)

    def wait_for_disconnects(
        self, namespace: str, sids: Collection[str], deadline: float
    ) -> set[str]:
        """Wait until the disconnect handler returned for every sid; return sids still missing."""
        expected = {(namespace, sid) for sid in sids}
        with self._cond:
            self._cond.wait_for(lambda: expected <= self._disconnected, _remaining(deadline))
            return {sid for _, sid in expected - self._disconnected}

    def join_tasks(self, deadline: float) -> list[threading.Thread]:
        """Join every tracked task, including ones started meanwhile; return those still alive."""
        joined = 0
        while True:
            with self._cond:
                batch = self._tasks[joined:]
            if not batch:
                return []
            alive = _join_all(batch, deadline)
            if alive:
                return alive
            joined += len(batch)


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


class SocketChurn:
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
            handshake, then namespace connection), and to flush its queued
            packets when disconnecting.
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
        _require_positive(
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
        client_class = _churn_client_class()
        threads_before = set(threading.enumerate())
        outcome = _ChurnOutcome()
        hooks = _SocketIOServerHooks(server)
        hooks.install()
        seconds = 0.0
        try:
            with serve_wsgi(app, join_timeout=self.timeout) as (host, port):
                url = f"http://{host}:{port}"
                started = time.perf_counter()
                self._churn(url, client_class, namespace, auth, on_connect, outcome)
                seconds = time.perf_counter() - started
                self._await_server(hooks, namespace, outcome)
                _raise_if_failed(outcome, hooks)
        except BaseException:
            # Clean up what can be cleaned up, and let the original error propagate.
            reported = len(outcome.problems)
            self._finish(hooks, threads_before, outcome)
            for message in outcome.problems[reported:]:
                _log.error("SocketChurn: %s", message)
            raise
        self._finish(hooks, threads_before, outcome)
        _raise_if_failed(outcome, hooks)
        _log.debug("SocketChurn: %d clients in %.3fs", self.clients, seconds)
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
        client_class: type[SocketIOClient],
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
                    sid = self._churn_one(
                        index, url, client_class, namespace, auth, on_connect, outcome
                    )
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
        client_class: type[SocketIOClient],
        namespace: str,
        auth: Any,
        on_connect: Callable[[SocketIOClient], object] | None,
        outcome: _ChurnOutcome,
    ) -> str:
        import socketio

        label = f"Socket.IO client {index + 1} of {self.clients}"
        client = client_class(
            # A reconnecting client would start threads of its own after a failure.
            reconnection=False,
            # Otherwise the first client made on the main thread installs a SIGINT handler.
            handle_sigint=False,
            request_timeout=self.connect_timeout,
        )
        client.eio.flush_timeout = self.connect_timeout
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
        except socketio.exceptions.ConnectionError as exc:
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
        loops = [
            task
            for task in (
                getattr(client.eio, "read_loop_task", None),
                getattr(client.eio, "write_loop_task", None),
            )
            if isinstance(task, threading.Thread)
        ]
        alive = _join_all(loops, time.monotonic() + self.connect_timeout)
        if alive:
            outcome.problem(
                f"{label}: client threads still running after disconnect: {_names(alive)}"
            )

    def _await_server(
        self, hooks: _SocketIOServerHooks, namespace: str, outcome: _ChurnOutcome
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
                f"{self.timeout:.1f}s after the last client left: {_names(stuck)}"
            )

    def _finish(
        self,
        hooks: _SocketIOServerHooks,
        threads_before: set[threading.Thread],
        outcome: _ChurnOutcome,
    ) -> None:
        """Restore the server and join what it left (the WSGI server is already closed)."""
        deadline = time.monotonic() + self.timeout
        # Tasks started while the server shut down, e.g. by a request thread's teardown.
        stuck = hooks.join_tasks(deadline)
        if stuck:
            outcome.problem(f"server background task(s) still running: {_names(stuck)}")
        pings = hooks.uninstall(deadline)
        if pings:
            outcome.problem(f"Engine.IO ping timer(s) still running: {_names(pings)}")
        # simple-websocket gives each connection a reader thread of its own
        # that nothing returns a handle to; it is named after it.  Closing the
        # connection ends it; join it so it cannot outlive run().
        readers = [
            thread
            for thread in threading.enumerate()
            if thread not in threads_before and "simple_websocket" in thread.name
        ]
        readers = _join_all(readers, deadline)
        if readers:
            outcome.problem(f"WebSocket reader thread(s) still running: {_names(readers)}")


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
            f"SocketChurn needs a SocketIO instance with async_mode='threading', got {mode!r}"
        )
    return server


def _raise_if_failed(outcome: _ChurnOutcome, hooks: _SocketIOServerHooks) -> None:
    """Raise the first client error, else a summary of server-side failures and problems."""
    if outcome.errors:
        for other in outcome.errors[1:]:
            _log.warning("SocketChurn: also failed: %s", other)
        raise outcome.errors[0]
    failures = hooks.failures
    if failures or outcome.problems:
        lines = [f"{what} raised {exc!r}" for what, exc in failures] + outcome.problems
        error = SocketChurnError("Socket.IO churn failed: " + "; ".join(lines))
        if failures:
            raise error from failures[0][1]
        raise error


# --------------------------------------------------------------------------
# HttpLoad
# --------------------------------------------------------------------------


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = math.ceil(percent / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


class HttpLoad:
    """Send many concurrent HTTP requests to a WSGI app, like ``ab -n N -c C``.

    The app is served by :func:`serve_wsgi`.  ``concurrency`` client threads
    (``http.client``) take requests from a shared counter until ``requests``
    have been sent.  Every request uses a new connection, like ``ab``
    without ``-k``: Werkzeug's server answers every response with
    ``Connection: close``, so keep-alive is not available.

    Args:
        requests: Total number of requests.
        concurrency: Number of requests in flight at once.
        timeout: Socket timeout, in seconds, of each request.
        join_timeout: Seconds the server may take, after the last response,
            to finish its request threads.
    """

    _MAX_FAILURE_SAMPLES = 5

    def __init__(
        self,
        requests: int = 1000,
        concurrency: int = 50,
        *,
        timeout: float = 30.0,
        join_timeout: float = 10.0,
    ) -> None:
        _require_positive(
            requests=requests, concurrency=concurrency, timeout=timeout, join_timeout=join_timeout
        )
        self.requests = requests
        self.concurrency = concurrency
        self.timeout = timeout
        self.join_timeout = join_timeout

    def run(
        self,
        app: WSGIApplication,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
    ) -> HttpLoadResult:
        """Send the requests and wait for every server request thread to finish.

        Request threads are joined before this returns, so teardown handlers
        have run for every request.  Status codes of all kinds (404, 500, ...)
        are counted, not raised; requests that got no response count as
        ``failures``.

        Raises:
            StressError: If server request threads are still running
                ``join_timeout`` seconds after the last response.
        """
        payload = body.encode() if isinstance(body, str) else body
        request_headers = dict(headers or {})
        indices = iter(range(self.requests))
        indices_lock = threading.Lock()

        def next_request() -> bool:
            with indices_lock:
                return next(indices, None) is not None

        def client(host: str, port: int) -> list[tuple[int | None, float, str]]:
            # (status or None, latency in ms, failure message)
            outcomes: list[tuple[int | None, float, str]] = []
            while next_request():
                started = time.perf_counter()
                connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
                try:
                    connection.request(method, path, body=payload, headers=request_headers)
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes.append((None, 0.0, f"{type(exc).__name__}: {exc}"))
                else:
                    elapsed = (time.perf_counter() - started) * 1000
                    outcomes.append((response.status, elapsed, ""))
                finally:
                    connection.close()
            return outcomes

        with serve_wsgi(app, join_timeout=self.join_timeout) as (host, port):
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="dbleak-http"
            ) as pool:
                futures = [pool.submit(client, host, port) for _ in range(self.concurrency)]
            seconds = time.perf_counter() - started
            outcomes = [outcome for future in futures for outcome in future.result()]
        # Leaving serve_wsgi joined every request thread.

        statuses = Counter(status for status, _, _ in outcomes if status is not None)
        latencies = sorted(latency for status, latency, _ in outcomes if status is not None)
        failure_messages = [message for status, _, message in outcomes if status is None]
        answered = len(latencies)
        result = HttpLoadResult(
            kind="http",
            runs=len(outcomes),
            seconds=seconds,
            concurrency=self.concurrency,
            statuses=dict(sorted(statuses.items())),
            failures=len(failure_messages),
            requests_per_second=answered / seconds if seconds > 0 else 0.0,
            latency_ms=LatencyMs(
                p50=_percentile(latencies, 50),
                p90=_percentile(latencies, 90),
                p99=_percentile(latencies, 99),
                max=latencies[-1],
            )
            if latencies
            else None,
            failure_samples=tuple(dict.fromkeys(failure_messages))[: self._MAX_FAILURE_SAMPLES],
        )
        _log.debug(
            "HttpLoad: %d requests (c=%d) in %.3fs: %s, %d failures",
            result.runs,
            self.concurrency,
            seconds,
            result.statuses,
            result.failures,
        )
        return result
