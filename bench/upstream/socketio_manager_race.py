"""python-socketio: the in-memory client manager is not thread safe (to report upstream).

Reproduces, against plain python-socketio, the race that
``pytest_dbleak.stress._upstream.serialise_manager`` works around.  In threading mode
python-socketio calls the manager from the request thread of each client: connects and
disconnects of different clients run concurrently.  The manager keeps
``pending_connect`` / ``pending_disconnect`` / ``rooms`` in plain dicts and deletes a
namespace's entry when its last member leaves -- so one thread's
``'/' in pending_connect`` and ``pending_connect['/']`` can be split by another's
``del pending_connect['/']``: ``KeyError: '/'``.  Through the server that is a client
that cannot connect, or whose disconnect handler never runs.

Run: ``python bench/upstream/socketio_manager_race.py`` -- exit 1 (and the first
traceback) when the race showed, 0 when it did not in the given rounds;
``--with-workaround`` runs the same with pytest-dbleak's serialisation.
Verified on python-socketio 5.18.1 (Python 3.11).
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback

import socketio


def churn(manager: socketio.Manager, worker: int, rounds: int, errors: list[str]) -> None:
    """One client after another through namespace "/": what each request thread does."""
    for number in range(rounds):
        try:
            sid = manager.pre_connect(f"eio-{worker}-{number}", "/")
            manager.connect(sid, "/")
            manager.is_connected(sid, "/")
            manager.pre_disconnect(sid, "/")
            manager.disconnect(sid, "/")
        except Exception:  # noqa: BLE001  (collected: the point is to show them)
            errors.append(traceback.format_exc())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument(
        "--with-workaround", action="store_true", help="serialise the manager as pytest-dbleak does"
    )
    args = parser.parse_args()
    # Switch threads as often as possible: a busy machine does this now and then.
    sys.setswitchinterval(1e-6)
    server = socketio.Server(async_mode="threading")
    manager = server.manager
    manager.initialize()
    if args.with_workaround:
        from pytest_dbleak.stress._upstream import serialise_manager

        for name, locked in serialise_manager(manager, threading.RLock()):
            setattr(manager, name, locked)
    errors: list[str] = []
    threads = [
        threading.Thread(target=churn, args=(manager, worker, args.rounds, errors))
        for worker in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = args.threads * args.rounds
    if errors:
        print(f"REPRODUCED: {len(errors)} of {total} connect/disconnect sequences raised")
        print(errors[0])
        return 1
    print(f"not reproduced in {total} connect/disconnect sequences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
