"""The loopback WSGI server every runner serves on: Werkzeug's threaded server, joined on close.

:func:`serve_wsgi` is the one way the runners start and stop a server.  Werkzeug is
imported at module level: only the runners that serve import this module, never
``import pytest_dbleak.stress`` itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from pytest_dbleak.stress._common import LOOPBACK, StressError, join_all, names, require_positive

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_log = logging.getLogger(__name__)

# socketserver only notices shutdown() between select() calls, so this bounds
# how long stopping a server takes.
POLL_INTERVAL = 0.05

# After a server has forcibly shut down the sockets of request threads that
# overran their deadline, how long those threads get to notice and exit.
FORCED_EXIT_GRACE = 2.0


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler as ``make_server(threaded=True)`` sets it up, but quiet."""

    # Declared here so Werkzeug does not assign it onto a handler class at runtime.
    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One INFO line per request from Werkzeug would flood a 1000-request run.
        _log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


class JoiningWSGIServer(ThreadedWSGIServer):
    """Werkzeug's threaded server, but it joins its request threads on close.

    Werkzeug sets ``daemon_threads = True``, and socketserver only tracks
    (and joins in ``server_close()``) non-daemon threads, so by default a
    request thread -- and the teardown handlers it runs -- may still be
    running after the server is closed.  Request threads stay daemon
    threads here (a wedged handler must not block interpreter exit) but
    are tracked and joined with a deadline.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: WSGIApplication,
        join_timeout: float,
        handler: type[WSGIRequestHandler] = RequestHandler,
    ) -> None:
        super().__init__(host, port, app, handler=handler)
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
        alive = join_all(connections, time.monotonic() + self.join_timeout)
        if alive:
            _log.warning(
                "%d server request thread(s) still running after %.1fs; "
                "shutting their connections down: %s",
                len(alive),
                self.join_timeout,
                names(alive),
            )
            for thread in alive:
                with contextlib.suppress(OSError):
                    connections[thread].shutdown(socket.SHUT_RDWR)
            alive = join_all(alive, time.monotonic() + FORCED_EXIT_GRACE)
        with self._connections_lock:
            for thread in connections:
                if not thread.is_alive():
                    self._connections.pop(thread, None)
        self.leftover_threads = [thread.name for thread in alive]


@contextlib.contextmanager
def serve_wsgi(
    app: WSGIApplication,
    *,
    host: str = LOOPBACK,
    join_timeout: float = 10.0,
    handler: type[WSGIRequestHandler] = RequestHandler,
) -> Iterator[tuple[str, int]]:
    """Serve ``app`` on ``host`` at a free port with Werkzeug's threaded server.

    Yields ``(host, port)``.  On exit the server stops accepting, then every
    request thread it started is joined, so teardown code that runs at the end
    of a request (Flask ``teardown_request``/``teardown_appcontext``, WebSocket
    sessions) has finished when the ``with`` block is left.

    The server is what ``werkzeug.serving.make_server(host, 0, app,
    threaded=True)`` builds, except that request threads are joined on close.
    ``handler`` is its request handler class: the Socket.IO churn passes one
    that closes a connection whose WebSocket session has ended
    (:class:`~pytest_dbleak.stress._upstream.WebSocketRequestHandler`).

    Raises:
        StressError: If request threads are still running ``join_timeout``
            seconds after the block ends (plus a short grace period after
            their connections are shut down).  When the block itself raised,
            this is logged instead so the original exception propagates.
    """
    require_positive(join_timeout=join_timeout)
    server = JoiningWSGIServer(host, 0, app, join_timeout, handler)
    serving = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": POLL_INTERVAL},
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
