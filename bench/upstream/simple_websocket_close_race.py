"""simple-websocket: the server's close() races its own reader thread (to report upstream).

Reproduces, against plain simple-websocket and python-engineio's threading wrapper
(``engineio.async_drivers._websocket_wsgi.SimpleWebSocketWSGI``), the two races that
``pytest_dbleak.stress._upstream.ClosingOnceWebSocket`` works around.  A server-side
session has three threads: the request thread waiting in ``wait()`` (``receive()``),
Engine.IO's writer that ends the session with ``close()``, and simple-websocket's reader
that answers the peer's close frame and wakes ``receive()`` through an event.  Timing
the threads is unreliable, so each race is staged deterministically at the moment it
happens, on a real wsproto connection over a real socket pair, with no reader thread:

1. The reader has just answered the client's close frame (wsproto is CLOSED) but not
   yet cleared ``connected``: ``close()`` sends a second close frame and raises
   ``LocalProtocolError`` -- the writer task dies although the handshake is complete.
2. ``close()`` clears ``connected`` but does not set the event ``receive()`` waits on
   (with no timeout).  A reader that then sees ``connected`` cleared leaves its loop
   without setting it either: the request thread waits forever.

Run: ``python bench/upstream/simple_websocket_close_race.py`` -- exit 1 when either
reproduced; ``--with-workaround`` uses pytest-dbleak's wrapper instead.  Verified on
simple-websocket 1.1.0, wsproto 1.3.2, python-engineio 4.15.1 (Python 3.11).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from typing import Any

from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from simple_websocket.ws import Base
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request


def server_session(wrapper_class: type[Any], peer_closed: bool) -> tuple[Any, Any, list[Any]]:
    """Engine.IO's wrapper around a server connection, its reader not running."""
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    if peer_closed:  # what the reader does with the client's close frame
        server.receive_data(client.send(CloseConnection(code=1000)))
        (close,) = server.events()
        server.send(close.response())
    ours, theirs = socket.socketpair()
    connection = object.__new__(Base)  # Base.__init__ would handshake and start the reader
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
    wrapper = object.__new__(wrapper_class)
    wrapper.ws = connection
    return wrapper, connection, [ours, theirs]


def close_after_peer(wrapper_class: type[Any]) -> str | None:
    wrapper, _, sockets = server_session(wrapper_class, peer_closed=True)
    try:
        wrapper.close()
    except Exception as exc:  # noqa: BLE001  (shown: it is the bug)
        return f"close() after the reader answered the peer raised {exc!r}"
    finally:
        for sock in sockets:
            sock.close()
    return None


def close_wakes_receive(wrapper_class: type[Any]) -> str | None:
    wrapper, connection, sockets = server_session(wrapper_class, peer_closed=False)
    waiter = threading.Thread(target=wrapper.wait, daemon=True)
    waiter.start()
    try:
        wrapper.close()
        waiter.join(2)
        if waiter.is_alive():
            return "wait() still blocked 2 s after close() (forever once the reader has left)"
    finally:
        connection.connected = False
        connection.event.set()
        waiter.join(2)
        for sock in sockets:
            sock.close()
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-workaround", action="store_true")
    args = parser.parse_args()
    wrapper_class: type[Any] = SimpleWebSocketWSGI
    if args.with_workaround:
        from pytest_dbleak.stress._upstream import ClosingOnceWebSocket

        wrapper_class = ClosingOnceWebSocket
    found = [m for m in (close_after_peer(wrapper_class), close_wakes_receive(wrapper_class)) if m]
    for message in found:
        print(f"REPRODUCED: {message}")
    if not found:
        print("not reproduced")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
