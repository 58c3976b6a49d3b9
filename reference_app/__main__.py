"""``python -m reference_app --host H --port P``: HTTP and Socket.IO in one process.

Werkzeug's threaded server with simple-websocket (Flask-SocketIO's threading
mode); the scheduler runs here when SCHEDULER_ENABLED is set. On Ctrl+C or
SIGTERM everything the app holds is released before the process exits.

``--reuse-port``: bind with SO_REUSEPORT, so that several processes started on
the same port share it and the kernel spreads the connections among them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.serving import make_server

from . import create_app, shutdown_app
from .config import ConfigError
from .db_monitor import get_monitor
from .errors import one_line
from .extensions import db, socketio
from .logging_setup import configure_logging
from .scheduler import start_scheduler
from .serving import RequestHandler

logger = logging.getLogger("reference_app.server")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reference_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes started the same way (SO_REUSEPORT)",
    )
    return parser.parse_args(argv)


def _serve_on_a_shared_port(app: Flask, host: str, port: int) -> None:
    # Werkzeug binds without SO_REUSEPORT; it serves a socket bound here instead.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(128)
        server = make_server(
            host,
            listener.getsockname()[1],
            app,
            threaded=True,
            request_handler=RequestHandler,
            fd=listener.fileno(),
        )
        try:
            server.log_startup()
            server.serve_forever()
        finally:
            server.server_close()
    finally:
        listener.close()


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The server loop treats KeyboardInterrupt as "stop": SIGTERM then takes
    # the same clean path as Ctrl+C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, build: Callable[[], Flask] = create_app) -> int:
    """Serve the app ``build()`` returns (the factory, reading the environment)."""
    args = _parse(argv)
    configure_logging()
    try:
        app = build()
    except ConfigError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    try:
        with app.app_context():
            # Fail fast on an unreachable database, and report the process's
            # ceiling against the server's max_connections once.
            with db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            get_monitor(app).log_pool_status()
        start_scheduler(app)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        if args.reuse_port:
            _serve_on_a_shared_port(app, args.host, args.port)
        else:
            socketio.run(
                app,
                host=args.host,
                port=args.port,
                allow_unsafe_werkzeug=True,
                request_handler=RequestHandler,
            )
    except SQLAlchemyError as error:
        print(f"error: database unavailable: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_app(app)
        logger.info("server stopped; connections released")
    return 0


if __name__ == "__main__":
    sys.exit(main())
