"""Werkzeug serving with WebSocket connections closed promptly."""

from __future__ import annotations

from typing import Any

from werkzeug.serving import WSGIRequestHandler


class RequestHandler(WSGIRequestHandler):
    """Close the TCP connection once a WebSocket session has ended.

    simple-websocket takes Werkzeug's socket over and ends the WSGI call with
    ConnectionError. Werkzeug then keeps the connection alive and waits for
    another HTTP request on it, so a python-socketio client, waiting for the
    closing handshake, gives up only after its 3 s time-out (and Werkzeug logs
    the client's close frame as a bad request).
    """

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        self.close_connection = True
        super().connection_dropped(error, environ)
