"""The upstream internals the Socket.IO churn relies on, and the three upstream races it fences.

The churn needs more of python-socketio, python-engineio, simple-websocket and Werkzeug
than their public APIs offer: it has to know when a disconnect handler has returned,
wake Engine.IO's ping timers, and keep three races of those libraries from failing a
churn for no fault of the application.  All of that is here and nowhere else.

Each piece names the versions it was verified on (:data:`VERIFIED_ON`) and checks its
target when it is installed; when a target is missing or has changed shape it raises
:class:`UpstreamChanged` -- one line naming the package, its installed version and the
versions verified -- rather than quietly switching itself off.  A newer version whose
targets still fit is used as is.

The races, to report upstream (nothing can be filed from this project's network); each
has a minimal reproduction against the plain upstream code under ``bench/upstream/``:

* python-socketio, manager thread safety (``socketio_manager_race.py``): the in-memory
  client manager updates ``rooms``, ``pending_connect`` and ``pending_disconnect`` in
  unlocked check-then-act sequences; in threading mode connects and disconnects run on
  different threads and fail with ``KeyError: '/'``.  Worked around by
  :func:`serialise_manager`.
* python-engineio, client close ordering (``engineio_client_close_order.py``):
  ``Client.disconnect()`` queues CLOSE for its writer thread, then closes the WebSocket
  from the calling thread at once, so the close frame overtakes packets still queued
  (events just emitted, Socket.IO's DISCONNECT).  Avoided by :class:`ChurnClient`,
  which writes every packet from the thread that sends it.  A second one, seen at the
  floors: ``disconnect(abort=True)`` (python-socketio before 5.14) can drain the
  writer's stop sentinel in ``_reset()``, leaving the writer waiting ~50 s; the churn
  client never aborts.
* simple-websocket, close vs reader (``simple_websocket_close_race.py``): ``close()``
  races the reader thread that answers the peer's close frame (``LocalProtocolError``
  or ``ConnectionClosed`` from a complete handshake), and clears ``connected`` without
  waking ``receive()``, which can then wait forever.  Worked around by
  :class:`ClosingOnceWebSocket`.

And one interplay, not a race: :class:`WebSocketRequestHandler` closes the TCP
connection of a finished WebSocket session, which Werkzeug would keep alive.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import engineio
import engineio.socket
import socketio
import socketio.base_manager
import socketio.manager
import websocket
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from simple_websocket import ConnectionClosed
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError

from pytest_dbleak.stress._common import StressError
from pytest_dbleak.stress.wsgi import RequestHandler

_log = logging.getLogger(__name__)

#: Distribution -> (declared floor, newest verified).  The floors are the ``stress``
#: extra's in pyproject.toml, run by ``tox -e min`` with .ci/min-versions.txt.
VERIFIED_ON: dict[str, tuple[str, str]] = {
    "python-socketio": ("5.12.0", "5.18.1"),
    "python-engineio": ("4.13.4", "4.15.1"),
    "simple-websocket": ("1.0.0", "1.1.0"),
    "wsproto": ("1.2.0", "1.3.2"),
    "websocket-client": ("1.6.0", "1.9.2"),
    "Werkzeug": ("3.0.0", "3.1.8"),
    "Flask-SocketIO": ("5.5.0", "5.7.0"),
}


class UpstreamChanged(StressError):
    """An upstream internal the churn relies on is missing or no longer fits."""


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def require(condition: object, distribution: str, what: str) -> None:
    """Raise :class:`UpstreamChanged` for ``what`` of ``distribution`` unless ``condition``."""
    if condition:
        return
    floor, newest = VERIFIED_ON[distribution]
    raise UpstreamChanged(
        f"pytest-dbleak's Socket.IO churn relies on {what}, which {distribution} "
        f"{installed_version(distribution)} does not have (verified on {floor} to {newest})"
    )


# --------------------------------------------------------------------------
# Werkzeug: a WebSocket session's connection is finished when the session is
# --------------------------------------------------------------------------


class WebSocketRequestHandler(RequestHandler):
    """Close the TCP connection once a WebSocket session on it has ended.

    Engine.IO (4.13.4 and later, python-engineio#457) ends a WebSocket session under
    Werkzeug by raising ConnectionError, which Werkzeug reports to
    ``connection_dropped()``.  The upgrade request was HTTP/1.1 without
    "Connection: close" and no response went through Werkzeug, so
    BaseHTTPRequestHandler treats the socket as keep-alive and blocks reading a "next
    request" from it until the client hangs up, while the client waits in
    websocket-client's ``close()`` for the socket to end -- up to 3 s.
    """

    def connection_dropped(
        self, error: BaseException, environ: dict[str, Any] | None = None
    ) -> None:
        self.close_connection = True
        super().connection_dropped(error, environ)


require(
    callable(getattr(RequestHandler, "connection_dropped", None)),
    "Werkzeug",
    "WSGIRequestHandler.connection_dropped()",
)


# --------------------------------------------------------------------------
# python-engineio: the client's close frame must not overtake queued packets
# --------------------------------------------------------------------------


class InOrderEngineIOClient(engineio.Client):
    """Engine.IO client that writes each WebSocket packet from the thread that sends it.

    ``engineio.Client`` queues packets for a writer thread, and its ``disconnect()``
    queues CLOSE and then, from the calling thread, closes the WebSocket at once: the
    close frame overtakes packets still in the queue -- the Socket.IO DISCONNECT, events
    just emitted -- and the server sees a dropped transport instead of a client leaving.
    Written at once by the sending thread (under a lock: the read loop answers pings
    from its own thread), every packet is on the wire before ``disconnect()`` writes
    CLOSE and the close frame, in that order.  Nothing is left to flush or wait for;
    the writer thread only ever receives its stop sentinel.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock = threading.Lock()

    def _send_packet(self, pkt: Any) -> None:
        if self.state != "connected" or self.current_transport != "websocket" or self.ws is None:
            # Not yet (the connect handler sends Socket.IO's CONNECT before ``ws`` is set
            # and the writer starts): queued, and written before connect() returns.
            super()._send_packet(pkt)
            return
        encoded = pkt.encode()
        with self._write_lock:
            try:
                if pkt.binary:
                    self.ws.send_binary(encoded)
                else:
                    self.ws.send(encoded)
            except (websocket.WebSocketConnectionClosedException, OSError) as exc:
                # As engineio's writer does: the read loop ends the closed connection.
                _log.warning(
                    "Engine.IO client %s: WebSocket closed while sending: %s", self.sid, exc
                )

    def disconnect(self, abort: bool = False, reason: Any = None) -> None:
        ws = self.ws if self.current_transport == "websocket" else None
        # Never abort=True, which python-socketio before 5.14 passes: disconnect() then
        # returns before the read loop has ended (and, with it, joined the writer), and
        # its _reset() can take the writer's stop sentinel off the queue first -- the
        # writer then waits out its ping timeout (~50 s).  A churn client waits for both.
        super().disconnect(abort=False, reason=reason)
        if ws is not None:
            # websocket-client's close() does nothing once the read loop has answered
            # the server's close frame (that marks the WebSocket "not connected"),
            # which leaves the socket to the garbage collector.  Nothing reads it any
            # more: close it.
            ws.shutdown()


class ChurnClient(socketio.Client):
    """python-socketio's client on :class:`InOrderEngineIOClient`."""

    def _engineio_client_class(self) -> type[Any]:
        return InOrderEngineIOClient


def client_threads(client: socketio.Client) -> list[threading.Thread]:
    """The Engine.IO read and write loops of ``client`` (started by ``connect()``)."""
    eio = client.eio
    require(
        hasattr(eio, "read_loop_task") and hasattr(eio, "write_loop_task"),
        "python-engineio",
        "Client.read_loop_task and Client.write_loop_task",
    )
    loops = (eio.read_loop_task, eio.write_loop_task)
    return [task for task in loops if isinstance(task, threading.Thread)]


require(
    callable(getattr(socketio.Client, "_engineio_client_class", None)),
    "python-socketio",
    "Client._engineio_client_class()",
)
require(
    callable(getattr(engineio.Client, "_send_packet", None)),
    "python-engineio",
    "Client._send_packet(pkt)",
)
require(
    "reason" in inspect.signature(engineio.Client.disconnect).parameters,
    "python-engineio",
    "Client.disconnect(reason=...) (python-engineio 4.11)",
)


# --------------------------------------------------------------------------
# simple-websocket: the server's close() against its own reader thread
# --------------------------------------------------------------------------

_ALREADY_CLOSING = (ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED)


class ClosingOnceWebSocket(SimpleWebSocketWSGI):
    """Engine.IO's simple-websocket WSGI wrapper whose ``close()`` is safe.

    A server-side WebSocket session involves three threads: the request thread, which
    waits in ``ws.wait()`` for the next message; Engine.IO's writer thread, which ends
    the session with ``ws.close()``; and simple-websocket's reader thread, which
    receives frames, answers the client's close frame and hands messages to ``wait()``
    by setting an event.  ``close()`` has two races with the reader:

    * It checks ``connected`` (twice: the wrapper, then simple-websocket), then sends a
      close frame.  When the reader has just answered the client's close frame on the
      same wsproto connection, wsproto refuses the second close frame --
      ``LocalProtocolError: ... cannot be sent in state CLOSED`` -- or, if the reader
      has also cleared ``connected`` between the two checks, simple-websocket raises
      ``ConnectionClosed``; either way the writer task dies with it, although the close
      handshake is complete.  Here both are ignored (the first only when the connection
      is indeed closing or closed, and then it is marked closed, as ``close()`` does).
    * It clears ``connected`` but, unlike every other place in simple-websocket that
      does, does not set the event that ``wait()`` blocks on (without a timeout).  If
      the reader, between two frames, then sees ``connected`` cleared, it leaves its
      loop and closes the socket without setting the event either, and the request
      thread waits forever -- shutting the connection down cannot wake it, the socket
      is already closed.  Here the event is set after closing.
    """

    def wait(self) -> Any:
        _remember_reader(self.ws)
        return super().wait()

    def close(self) -> None:
        ws: Any = self.ws
        _remember_reader(ws)
        require(
            callable(getattr(getattr(ws, "event", None), "set", None))
            and hasattr(ws, "connected")
            and isinstance(getattr(getattr(ws, "ws", None), "state", None), ConnectionState),
            "simple-websocket",
            "Base.event, Base.connected and Base.ws (a wsproto connection)",
        )
        try:
            super().close()
        except ConnectionClosed:
            pass  # the reader marked it closed after the wrapper checked: nothing to do
        except LocalProtocolError:
            if ws.ws.state not in _ALREADY_CLOSING:
                raise
            ws.connected = False  # what close() would have done; the reader is about to
        finally:
            ws.event.set()  # wait() re-checks ``connected`` and returns


# simple-websocket gives each connection a reader thread of its own that nothing
# returns a handle to; the sessions served through ClosingOnceWebSocket record theirs.
_readers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_readers_lock = threading.Lock()


def _remember_reader(ws: Any) -> None:
    reader = getattr(ws, "thread", None)
    require(isinstance(reader, threading.Thread), "simple-websocket", "Base.thread (the reader)")
    assert isinstance(reader, threading.Thread)
    with _readers_lock:
        _readers.add(reader)


def websocket_readers() -> list[threading.Thread]:
    """The reader threads, still alive, of the WebSocket sessions served so far."""
    with _readers_lock:
        return [thread for thread in _readers if thread.is_alive()]


#: python-engineio's ``Server._async``: the async driver table (thread, sleep, websocket).
DRIVER_TABLE = "_async"


def websocket_drivers(eio: Any) -> dict[str, Any]:
    """A copy of ``eio``'s async driver table with :class:`ClosingOnceWebSocket` in it.

    A copy: the table is the threading driver module's own, shared by every server.
    """
    drivers = getattr(eio, DRIVER_TABLE, None)
    require(
        isinstance(drivers, dict) and drivers.get("websocket") is SimpleWebSocketWSGI,
        "python-engineio",
        "Server._async['websocket'] being async_drivers._websocket_wsgi.SimpleWebSocketWSGI",
    )
    assert isinstance(drivers, dict)
    return {**drivers, "websocket": ClosingOnceWebSocket}


# --------------------------------------------------------------------------
# python-socketio: the client manager's bookkeeping, one call at a time
# --------------------------------------------------------------------------

#: Manager methods that run application code (an ack callback): never under the lock,
#: which would hold every connect and disconnect up while it runs.
CALLS_APPLICATION = ("trigger_callback",)

require(
    all(callable(getattr(socketio.manager.Manager, name, None)) for name in CALLS_APPLICATION),
    "python-socketio",
    f"Manager.{', '.join(CALLS_APPLICATION)}()",
)


def manager_methods() -> list[str]:
    """Every method of python-socketio's in-memory manager to serialise.

    Derived from the classes themselves, not listed: a method upstream adds to
    ``BaseManager`` or ``Manager`` is serialised too.  Dunder methods and
    :data:`CALLS_APPLICATION` are left alone.
    """
    found: dict[str, None] = {}
    for cls in (socketio.base_manager.BaseManager, socketio.manager.Manager):
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and not name.startswith("__"):
                found[name] = None
    return [name for name in found if name not in CALLS_APPLICATION]


def serialise_manager(manager: Any, lock: threading.RLock) -> list[tuple[str, Callable[..., Any]]]:
    """Replacements that run each of ``manager``'s bookkeeping methods under ``lock``.

    python-socketio's in-memory manager keeps ``rooms``, ``pending_connect`` and
    ``pending_disconnect`` in plain dicts of lists and bidicts with no lock, and deletes
    a namespace's entry when its last member leaves -- check-then-act sequences that
    interleave when connects and disconnects run on different threads, as they do in
    threading mode.  One thread deletes ``pending_connect['/']`` (its list just became
    empty) between another's ``'/' in pending_connect`` and ``pending_connect['/']``:
    ``KeyError: '/'``, raised inside Engine.IO's message or disconnect handler, which
    logs it and moves on.  Raised from ``is_connected()`` in ``_handle_disconnect``,
    the application's disconnect handler never runs; from ``pre_connect()``, the
    client cannot connect.

    Every method of :func:`manager_methods`, as ``manager`` resolves it (a subclass's
    override included), holds one re-entrant lock; generator methods
    (``get_participants``, ``get_namespaces``) return a snapshot taken under it.
    Returns ``(name, replacement)`` pairs to set on the instance.
    """
    require(
        isinstance(manager, socketio.manager.Manager),
        "python-socketio",
        "a server whose client manager is a socketio.Manager (threading mode)",
    )
    replacements = []
    for name in manager_methods():
        method = getattr(manager, name)
        if inspect.isgeneratorfunction(inspect.unwrap(method)):
            replacements.append((name, _snapshot_under(lock, method)))
        else:
            replacements.append((name, _under(lock, method)))
    return replacements


def _under(lock: threading.RLock, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return call


def _snapshot_under(
    lock: threading.RLock, method: Callable[..., Iterator[Any]]
) -> Callable[..., Iterator[Any]]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with lock:
            return iter(list(method(*args, **kwargs)))

    return call


# --------------------------------------------------------------------------
# The server internals the churn's hooks wrap
# --------------------------------------------------------------------------

#: python-socketio's ``Server._trigger_event(event, namespace, *args)``: the one place
#: every application handler, the disconnect handler included, is called from.
TRIGGER_EVENT = "_trigger_event"

#: python-engineio's ``Server.start_service_task``: whether the client-monitor task
#: still has to be started (on the first connection, running until ``shutdown()``).
SERVICE_TASK_FLAG = "start_service_task"

require(
    list(inspect.signature(socketio.Server._trigger_event).parameters)[:3]
    == ["self", "event", "namespace"],
    "python-socketio",
    "Server._trigger_event(event, namespace, *args)",
)
require(
    callable(getattr(engineio.socket.Socket, "_send_ping", None)),
    "python-engineio",
    "Socket._send_ping() (the per-connection ping timer)",
)


def check_server(server: Any) -> None:
    """Check that a python-socketio server has the internals the hooks wrap."""
    eio = getattr(server, "eio", None)
    require(
        callable(getattr(server, TRIGGER_EVENT, None)),
        "python-socketio",
        f"Server.{TRIGGER_EVENT}()",
    )
    require(
        eio is not None and isinstance(getattr(eio, SERVICE_TASK_FLAG, None), bool),
        "python-engineio",
        f"Server.{SERVICE_TASK_FLAG}",
    )


def is_ping_task(target: object) -> bool:
    """Whether ``target`` is Engine.IO's per-connection ping timer (``Socket._send_ping``)."""
    return getattr(target, "__func__", None) is engineio.socket.Socket._send_ping
