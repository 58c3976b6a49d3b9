"""``python -m reference_app --host H --port P``: HTTP and Socket.IO in one process.

Werkzeug's threaded server with simple-websocket (Flask-SocketIO's threading
mode); the scheduler runs here when SCHEDULER_ENABLED is set. On Ctrl+C or
SIGTERM everything the app holds is released before the process exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

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
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The server loop treats KeyboardInterrupt as "stop": SIGTERM then takes
    # the same clean path as Ctrl+C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging()
    try:
        app = create_app()
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
