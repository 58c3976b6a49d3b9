"""The reference app under the seed's load, on a private MariaDB of the process backend.

    python bench/reference_app_load.py [--rounds 3] [--churns 5]

Measures, on this machine:

* the seed's ``ab -n 1000 -c 50`` on ``GET /api/locations`` (demo data), ``--rounds``
  times against the one application: requests/s, latency p50/p90/p99 (nearest rank, new
  connection per request as ``ab`` without ``-k``), status counts, failures (no HTTP
  response), and what the pool and the server went through *during* the round: the
  highest ``checked_out`` and ``overflow`` seen by the app's ``DBConnectionMonitor``
  (sampled every 5 ms from a thread) and the server's highest ``Threads_connected``
  (sampled every 20 ms on a connection of its own, which it includes); after the round,
  what ``/db-pool-status`` says;
* 100-client Socket.IO churn (each client a different driver with a real token, one
  ``location_update`` each, then the disconnect task), ``--churns`` times: the median.

The requests go through ``pytest_dbleak.stress`` (``HttpLoad``, ``SocketChurn``): the
runners of the stress fixtures, serving the app with Werkzeug's threaded server on
127.0.0.1. The database server is ``pytest_dbleak.families.mysql.embedded.start_process`` (a private
``mariadbd`` from the warm template cache), stopped at the end; its datadir lives in the
script's private work directory, which is removed with anything still running from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as c

sys.path.insert(0, str(c.REPO))

LOAD_REQUESTS, LOAD_CONCURRENCY = 1000, 50
CLIENTS, CHURN_CONCURRENCY = 100, 10
DATABASE = "buggy"


class Sampler:
    """Highest pool and server numbers seen while a round runs."""

    def __init__(self, app: Any, endpoint: Any) -> None:
        self.app = app
        self.endpoint = endpoint
        self.max_checked_out = self.max_overflow = self.max_threads = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Sampler:
        self._threads = [
            threading.Thread(target=self._pool, name="bench-pool-sampler"),
            threading.Thread(target=self._server, name="bench-server-sampler"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _pool(self) -> None:
        from reference_app.db_monitor import get_monitor

        monitor = get_monitor(self.app)
        with self.app.app_context():
            while not self._stop.is_set():
                snap = monitor.snapshot()
                self.max_checked_out = max(self.max_checked_out, snap.checked_out)
                self.max_overflow = max(self.max_overflow, snap.overflow)
                self._stop.wait(0.005)

    def _server(self) -> None:
        conn = self.endpoint.connect()
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                    self.max_threads = max(self.max_threads, int(cur.fetchone()[1]))
                    self._stop.wait(0.02)
        finally:
            conn.close()


def build_app(endpoint: Any) -> Any:
    from reference_app import create_app
    from reference_app.extensions import db
    from reference_app.tests.config import testing_settings

    with endpoint.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {DATABASE}")
    url = (
        f"mysql+pymysql://{endpoint.user}:{endpoint.password}@127.0.0.1:{endpoint.port}/{DATABASE}"
    )
    settings = testing_settings()
    settings.update(SQLALCHEMY_DATABASE_URI=url, LOG_LEVEL="WARNING")
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    return app


def seed(app: Any) -> tuple[list[str], int]:
    """The demo data (locations, admin, driver1, guest1), plus 100 drivers with buggies."""
    from sqlalchemy import insert, select

    from reference_app.auth import issue_token
    from reference_app.demo import seed_demo
    from reference_app.extensions import db
    from reference_app.models import Buggy, Location, Role, User

    with app.app_context():
        seed_demo("bench-password")
        db.session.execute(
            insert(User),
            [
                {"username": f"churn{i:03d}", "password_hash": "x", "role": Role.DRIVER.value}
                for i in range(CLIENTS)
            ],
        )
        drivers = db.session.scalars(select(User).where(User.username.like("churn%"))).all()
        db.session.execute(
            insert(Buggy),
            [{"code": f"C-{i:03d}", "driver_id": d.id} for i, d in enumerate(drivers)],
        )
        tokens = [issue_token(driver) for driver in drivers]
        location_id = db.session.scalars(select(Location.id).order_by(Location.id)).first()
        db.session.commit()
        db.session.remove()
    return tokens, int(location_id)


def pool_status(app: Any) -> dict[str, Any]:
    report: dict[str, Any] = app.test_client().get("/db-pool-status").get_json()
    return report


def load_round(app: Any, endpoint: Any) -> dict[str, Any]:
    from pytest_dbleak.stress import HttpLoad

    with Sampler(app, endpoint) as sampled:
        result = HttpLoad(LOAD_REQUESTS, LOAD_CONCURRENCY).run(app, "/api/locations")
    after = pool_status(app)
    return {
        "result": result,
        "max_checked_out": sampled.max_checked_out,
        "max_overflow": sampled.max_overflow,
        "max_threads_connected": sampled.max_threads,
        "after": after,
    }


def churn_once(app: Any, tokens: list[str], location_id: int) -> tuple[float, float, Any]:
    from pytest_dbleak.stress import SocketChurn
    from reference_app.extensions import socketio

    queue = iter(tokens)
    lock = threading.Lock()

    def auth() -> dict[str, str]:
        with lock:
            return {"token": next(queue)}

    def report(client: Any) -> None:
        ack = client.call("location_update", {"location_id": location_id}, timeout=10)
        if not ack.get("ok"):
            raise RuntimeError(f"location_update refused: {ack}")

    started = time.perf_counter()
    result = SocketChurn(CLIENTS, CHURN_CONCURRENCY).run(
        app, socketio, auth=auth, on_connect=report
    )
    return time.perf_counter() - started, result.seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churns", type=int, default=5)
    args = parser.parse_args()
    if c.MARIADBD is None:
        print("mariadbd not found", file=sys.stderr)
        return 2

    from pytest_dbleak.engine.settings import Settings
    from pytest_dbleak.families.mysql.embedded import start_process
    from reference_app import shutdown_app

    start_load = c.load()
    machine = c.machine_table  # rendered now: its load average is the one at start
    work = c.Workdir("refapp")
    tempfile.tempdir = str(work.tmp)  # the server's datadir lands in our work dir
    cache = Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache
    server = start_process(c.MARIADBD, Path(cache), 30.0)
    app = None
    try:
        app = build_app(server.endpoint)
        tokens, location_id = seed(app)
        with server.endpoint.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@max_connections, VERSION()")
            max_connections, version = cur.fetchone()
        machine_text = machine(
            [("database server", f"{version}, max_connections={max_connections}")]
        )

        rounds = []
        for number in range(1, args.rounds + 1):
            c.sample_load()
            rounds.append(load_round(app, server.endpoint))
            r = rounds[-1]["result"]
            print(f"round {number}: {r.requests_per_second:.0f} req/s", file=sys.stderr)

        churns = []
        for number in range(1, args.churns + 1):
            c.sample_load()
            churns.append(churn_once(app, tokens, location_id))
            print(f"churn {number}: {churns[-1][0]:.2f} s", file=sys.stderr)
        after_churn = pool_status(app)
    finally:
        if app is not None:
            shutdown_app(app)
        server.stop()
        tempfile.tempdir = None

    rows = []
    for number, r in enumerate(rounds, 1):
        res = r["result"]
        lat = res.latency_ms
        pool = r["after"]["pool"]
        rows.append(
            (
                number,
                f"{res.requests_per_second:.0f}",
                f"{lat.p50:.1f} / {lat.p90:.1f} / {lat.p99:.1f}" if lat else "n/a",
                ", ".join(f"{code}: {n}" for code, n in res.statuses.items()),
                res.failures,
                f"{r['max_checked_out']} / {r['max_overflow']}",
                r["max_threads_connected"],
                f"{pool['checked_out']} / {pool['checked_in']} / {pool['overflow']} "
                f"({r['after']['status']})",
            )
        )
    walls = [w for w, _, _ in churns]
    inner = [i for _, i, _ in churns]
    print("## Reference app under load\n")
    print(machine_text)
    print()
    print(
        f"`GET /api/locations`, {LOAD_REQUESTS} requests, {LOAD_CONCURRENCY} at a time "
        f"(pool_size 20, max_overflow 40):\n"
    )
    print(
        c.table(
            (
                "round",
                "req/s",
                "latency p50 / p90 / p99 (ms)",
                "statuses",
                "failures",
                "max checked_out / overflow during",
                "max Threads_connected during",
                "after: checked_out / checked_in / overflow",
            ),
            rows,
        )
    )
    print()
    print(
        c.table(
            ("Socket.IO churn", "median", "min", "max"),
            [
                (
                    f"{CLIENTS} drivers, {CHURN_CONCURRENCY} at a time: whole run (s)",
                    c.s(c.median(walls)),
                    c.s(min(walls)),
                    c.s(max(walls)),
                ),
                (
                    "  of which connecting and disconnecting (s)",
                    c.s(c.median(inner)),
                    c.s(min(inner)),
                    c.s(max(inner)),
                ),
            ],
        )
    )
    print()
    print(
        f"After the churns: `/db-pool-status` pool = {json.dumps(after_churn['pool'])}; "
        f"disconnect handlers per churn: {sorted({r.disconnects for _, _, r in churns})}."
    )
    print()
    c.sample_load()
    loads = c._LOADS
    cpus = os.cpu_count() or 1
    busy = max(loads) >= 0.5 * cpus
    print(
        f"1-min load average sampled before each round and churn: {min(loads):.2f} - "
        f"{max(loads):.2f} on {cpus} CPUs (at start: {start_load}). "
        + (
            "The machine was busy with other work: absolute numbers are inflated and noisy."
            if busy
            else "The machine was quiet."
        )
    )
    print()
    print(work.report_cleanup())
    work.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
