"""python-engineio: the client's close frame overtakes queued packets (to report upstream).

Reproduces, against plain python-engineio, the race that
``pytest_dbleak.stress._upstream.InOrderEngineIOClient`` avoids.
``engineio.Client.disconnect()`` puts CLOSE on the queue of its writer thread and then,
from the calling thread, closes the WebSocket at once.  Messages sent just before
``disconnect()`` that the writer has not written yet are lost, or arrive after the
close frame: the server sees a transport that went away ("transport close") instead
of a client that left ("client disconnect").

Each round connects a client over WebSocket, sends ``--messages`` messages and
disconnects; the server counts what it received and the disconnect reason.

Run: ``python bench/upstream/engineio_client_close_order.py`` -- exit 1 when a round
lost messages or ended as a dropped transport, 0 otherwise; ``--with-workaround``
uses pytest-dbleak's client.  Verified on python-engineio 4.15.1, websocket-client
1.9.2, Werkzeug 3.1.8 (Python 3.11).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
from typing import Any

import engineio
from werkzeug.serving import WSGIRequestHandler, make_server


class Handler(WSGIRequestHandler):
    # Not part of the race: without this Werkzeug keeps a finished WebSocket's
    # connection alive and every disconnect waits ~3 s (see _upstream.WebSocketRequestHandler).
    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        self.close_connection = True
        super().connection_dropped(error, environ)

    def log_request(self, *args: Any) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--with-workaround", action="store_true")
    args = parser.parse_args()

    # Handlers inline in the request thread: the server sees packets in wire order.
    server = engineio.Server(async_mode="threading", async_handlers=False)
    lock = threading.Lock()
    received: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    gone = threading.Condition(lock)

    @server.on("message")
    def message(sid: str, data: Any) -> None:
        with lock:
            received[sid] += 1

    @server.on("disconnect")
    def disconnect(sid: str, reason: Any = None) -> None:
        with gone:
            reasons[sid] = str(reason)
            gone.notify_all()

    http = make_server(
        "127.0.0.1", 0, engineio.WSGIApp(server), threaded=True, request_handler=Handler
    )
    serving = threading.Thread(target=http.serve_forever, daemon=True)
    serving.start()
    client_class: type[engineio.Client] = engineio.Client
    if args.with_workaround:
        from pytest_dbleak.stress._upstream import InOrderEngineIOClient

        client_class = InOrderEngineIOClient
    bad = []
    try:
        for _ in range(args.rounds):
            client = client_class()
            client.connect(f"http://127.0.0.1:{http.server_port}", transports=["websocket"])
            sid = client.sid
            for number in range(args.messages):
                client.send(f"message {number}")
            client.disconnect()
            with gone:
                gone.wait_for(lambda sid=sid: sid in reasons, 10)
                got, reason = received[sid], reasons.get(sid, "(none after 10 s)")
            if got != args.messages or reason != "client disconnect":
                bad.append(f"{got} of {args.messages} messages, disconnect reason {reason!r}")
    finally:
        http.shutdown()
        serving.join()
    if bad:
        print(f"REPRODUCED in {len(bad)} of {args.rounds} rounds, e.g.: {bad[0]}")
        return 1
    print(f"not reproduced in {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
