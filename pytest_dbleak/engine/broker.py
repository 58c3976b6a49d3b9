"""One server per family for all xdist workers, started when a worker first needs it.

No pytest import. The xdist controller does not collect, so it cannot know which family
the tests will request; each worker knows after its collection. The controller runs a
``Broker`` on a unix socket in a private folder: a worker asks for a family by name and
gets that server's endpoint (the controller starts it on the first request, owns it and
stops it at the end), or the one-line error that starting it gave. A server is started
once however many workers ask at the same time.

The protocol is one JSON line each way: ``{"family": "postgresql"}`` ->
``{"server": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.errors import DbleakError

log = logging.getLogger(__name__)

Serve = Callable[[str], dict[str, Any]]  # family name -> the server's fields; DbleakError


class Broker:
    """Answers workers' requests for a family's server, one request at a time."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self._folder = Path(tempfile.mkdtemp(prefix="dbleak-broker-"))  # 0700: ours alone
        self.path = str(self._folder / "broker.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._lock = threading.Lock()  # one start at a time: a second asker waits for it
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="dbleak-broker", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._answer, args=(conn,), name="dbleak-broker-answer", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            try:
                request = json.loads(stream.readline() or b"{}")
                family = str(request.get("family", ""))
                with self._lock:
                    reply: dict[str, Any] = {"server": self._serve(family)}
            except DbleakError as exc:
                reply = {"error": str(exc)}
            except (ValueError, OSError) as exc:
                reply = {"error": f"bad request to the server broker: {exc}"}
            except Exception as exc:  # the worker must hear it, not wait for its timeout
                # A bug while starting the server: without a reply the worker would wait
                # for its whole timeout and then blame the controller. Its first line
                # goes to the worker; the traceback to the controller's log.
                log.exception("dbleak: the server broker failed")
                first = (str(exc).strip().splitlines() or [""])[0]
                reply = {"error": f"starting the server failed: {type(exc).__name__}: {first}"}
            with contextlib.suppress(OSError):
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._folder, ignore_errors=True)


def ask(path: str, family: str, timeout: float) -> dict[str, Any]:
    """The fields of the controller's `family` server; DbleakError with its reason."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            # Long enough for the controller to start the server (its own startup timeout
            # bounds that) and for a concurrent request to finish first.
            sock.settimeout(timeout)
            sock.connect(path)
            with sock.makefile("rwb") as stream:
                stream.write(json.dumps({"family": family}).encode() + b"\n")
                stream.flush()
                line = stream.readline()
    except OSError as exc:
        raise DbleakError(
            f"cannot reach the xdist controller for a server ({exc.strerror or exc})"
        ) from None
    if not line:
        raise DbleakError("the xdist controller gave no server (it may have stopped)")
    reply = json.loads(line)
    if "error" in reply:
        raise DbleakError(reply["error"])
    server: dict[str, Any] = reply["server"]
    return server
