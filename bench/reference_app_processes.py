"""The reference app as a deployment: three ``python -m reference_app --reuse-port``
processes behind one port, loaded with ``ab``, beside one process and the in-process runner.

    python bench/reference_app_processes.py [--rounds 3] [--churns 3]

Needs ``ab`` (Debian: apache2-utils) and ``mariadbd``; uses Redis on 127.0.0.1:6379 as
Socket.IO's message queue when one answers. Measures, on this machine, on a private
MariaDB of the process backend (``max_connections`` 151):

* the seed's ``ab -n 1000 -c 50`` on ``GET /api/locations`` (demo data), ``--rounds``
  times, interleaved: against three processes sharing one port (SO_REUSEPORT: the kernel
  spreads the connections), against one process, and through the in-process runner
  (``pytest_dbleak.stress.HttpLoad``, as ``reference_app_load.py``): requests/s, ``ab``'s
  latency percentiles, failures and non-2xx answers, the server's highest
  ``Threads_connected`` during the round, and afterwards every process's
  ``/db-pool-status`` (checked out, status);
* the seed's 100-driver Socket.IO churn against the three processes (each driver
  connects over WebSocket, sends one ``location_update``, disconnects), ``--churns``
  times: the time until every client is gone and until every buggy is offline again
  (each disconnect task ran in whichever process held the socket).

Every process is stopped with SIGTERM at the end and must exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c

sys.path.insert(0, str(c.REPO))

LOAD_REQUESTS, LOAD_CONCURRENCY = 1000, 50
CLIENTS, CHURN_CONCURRENCY = 100, 10
PROCESSES = 3
DATABASE = "buggy"
SECRET = "bench-secret-key"
DEMO_PASSWORD = "bench-password"
_RUNNING_ON = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_url() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return "redis://127.0.0.1:6379/0"
    except OSError:
        return None


class AppProcess:
    """One ``python -m reference_app``; its output is kept, its stop must be clean."""

    def __init__(self, env: dict[str, str], port: int, *args: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reference_app", "--port", str(port), *args],
            cwd=c.REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if _RUNNING_ON.search(line):
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.reader.join(timeout=10)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def pool_of_each(base: str, processes: int) -> dict[str, dict[str, Any]]:
    """``/db-pool-status`` of every process behind ``base`` (new connections land on
    random processes; ask until each has answered)."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        report = get_json(f"{base}/db-pool-status")
        seen[report["details"]["process"]] = report
        if len(seen) == processes:
            break
    return seen


class ThreadsSampler:
    """The server's highest Threads_connected while a round runs (its own connection
    included), sampled every 20 ms."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-threads-sampler")

    def __enter__(self) -> ThreadsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = self.endpoint.connect()
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                    self.highest = max(self.highest, int(cur.fetchone()[1]))
                    self._stop.wait(0.02)
        finally:
            conn.close()


def ab(url: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ab", "-q", "-n", str(LOAD_REQUESTS), "-c", str(LOAD_CONCURRENCY), "-s", "60", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    text = out.stdout

    def number(label: str) -> float:
        match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.MULTILINE))
    return {
        "rps": number("Requests per second"),
        "complete": int(number("Complete requests")),
        "failed": int(number("Failed requests")),
        "non_2xx": int(number("Non-2xx responses")),
        "p50": percentiles.get("50"),
        "p90": percentiles.get("90"),
        "p99": percentiles.get("99"),
        "rc": out.returncode,
        "stderr": out.stderr.strip()[-300:],
    }


def prepare(endpoint: Any, env: dict[str, str]) -> tuple[Any, list[str], int]:
    """init-db --demo through the real command (it creates the database as utf8mb4), then
    100 drivers with buggies and their tokens, and an in-process app for the runner."""
    from sqlalchemy import insert, select

    from reference_app import create_app
    from reference_app.auth import issue_token
    from reference_app.extensions import db
    from reference_app.models import Buggy, Location, Role, User
    from reference_app.tests.config import testing_settings

    init = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "reference_app", "init-db", "--demo"],
        cwd=c.REPO,
        env={**env, "REFERENCE_APP_DEMO_PASSWORD": DEMO_PASSWORD},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(f"init-db failed: {init.stderr.strip()}")
    settings = testing_settings()
    settings.update(
        SQLALCHEMY_DATABASE_URI=env["DATABASE_URL"], SECRET_KEY=SECRET, LOG_LEVEL="WARNING"
    )
    app = create_app(settings)
    with app.app_context():
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
    return app, tokens, int(location_id or 0)


def offline_churn_buggies(app: Any) -> int:
    from sqlalchemy import func, select

    from reference_app.extensions import db
    from reference_app.models import Buggy

    with app.app_context():
        count = db.session.scalar(
            select(func.count())
            .select_from(Buggy)
            .where(Buggy.code.like("C-%"), Buggy.status == "offline")
        )
        db.session.remove()
    return int(count or 0)


def churn(base: str, app: Any, tokens: list[str], location_id: int) -> dict[str, float]:
    import socketio

    def one(token: str) -> None:
        client = socketio.Client(reconnection=False)
        client.connect(base, auth={"token": token}, transports=["websocket"], wait_timeout=30)
        try:
            ack = client.call("location_update", {"location_id": location_id}, timeout=30)
            if not ack.get("ok"):
                raise RuntimeError(f"location_update refused: {ack}")
        finally:
            client.disconnect()

    started = time.perf_counter()
    with ThreadPoolExecutor(CHURN_CONCURRENCY) as pool:
        list(pool.map(one, tokens))
    clients_done = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while offline_churn_buggies(app) < CLIENTS and time.monotonic() < deadline:
        time.sleep(0.02)  # the disconnect tasks run in the servers: poll the database
    return {
        "clients": clients_done,
        "offline": time.perf_counter() - started,
        "offline_count": offline_churn_buggies(app),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churns", type=int, default=3)
    args = parser.parse_args()
    if c.MARIADBD is None or shutil.which("ab") is None:
        print("needs mariadbd and ab (apt-get install apache2-utils)", file=sys.stderr)
        return 2

    from pytest_dbleak.engine.settings import Settings
    from pytest_dbleak.families.mysql.embedded import start_process
    from reference_app import shutdown_app

    start_load = c.load()
    machine = c.machine_table
    work = c.Workdir("refapp-processes")
    tempfile.tempdir = str(work.tmp)
    cache = Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache
    server = start_process(c.MARIADBD, Path(cache), 30.0)
    e = server.endpoint
    queue = redis_url()
    from reference_app.tests.config import child_environment

    env = dict(os.environ)
    env.update(child_environment())
    env.update(
        PYTHONPATH=str(c.REPO),
        SECRET_KEY=SECRET,
        DATABASE_URL=f"mysql+pymysql://{e.user}:{e.password}@127.0.0.1:{e.port}/{DATABASE}",
        SCHEDULER_ENABLED="1",
        SERVER_PROCESSES=str(PROCESSES),
        LOG_LEVEL="WARNING",
        SOCKETIO_CHANNEL=f"bench-{os.getpid()}",
    )
    if queue:
        env["SOCKETIO_MESSAGE_QUEUE"] = queue
    processes: list[AppProcess] = []
    app = None
    codes: list[int] = []
    try:
        app, tokens, location_id = prepare(e, env)
        with e.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@max_connections, VERSION()")
            max_connections, version = cur.fetchone()
        machine_text = machine(
            [
                ("database server", f"{version}, max_connections={max_connections}"),
                ("Socket.IO message queue", queue or "none (no Redis answered)"),
            ]
        )
        shared_port, single_port = free_port(), free_port()
        processes = [AppProcess(env, shared_port, "--reuse-port") for _ in range(PROCESSES)]
        processes.append(AppProcess({**env, "SERVER_PROCESSES": "1"}, single_port))
        for proc in processes:
            if not proc.ready.wait(60) or proc.process.poll() is not None:
                raise RuntimeError("a server did not start:\n" + "\n".join(proc.lines[-20:]))
        shared, single = f"http://127.0.0.1:{shared_port}", f"http://127.0.0.1:{single_port}"
        startup_warning = next(
            (line for line in processes[0].lines if "exceed the server's max_connections" in line),
            "none",
        )

        from pytest_dbleak.stress import HttpLoad

        rows: list[tuple[Any, ...]] = []
        for number in range(1, args.rounds + 1):
            for label, base, count in (
                ("3 processes, one port (ab)", shared, PROCESSES),
                ("1 process (ab)", single, 1),
            ):
                c.sample_load()
                with ThreadsSampler(e) as sampled:
                    result = ab(f"{base}/api/locations")
                pools = pool_of_each(base, count)
                rows.append(
                    (
                        number,
                        label,
                        f"{result['rps']:.0f}",
                        f"{result['p50']} / {result['p90']} / {result['p99']}",
                        f"{result['complete']} complete, {result['failed']} failed, "
                        f"{result['non_2xx']} non-2xx",
                        sampled.highest,
                        f"{sum(p['pool']['checked_out'] for p in pools.values())} "
                        f"({len(pools)} of {count} answered; "
                        f"{', '.join(sorted({p['status'] for p in pools.values()}))})",
                    )
                )
                print(f"round {number} {label}: {result['rps']:.0f} req/s", file=sys.stderr)
            c.sample_load()
            with ThreadsSampler(e) as sampled:
                res = HttpLoad(LOAD_REQUESTS, LOAD_CONCURRENCY).run(app, "/api/locations")
            lat = res.latency_ms
            after = app.test_client().get("/db-pool-status").get_json()
            rows.append(
                (
                    number,
                    "in-process runner (HttpLoad)",
                    f"{res.requests_per_second:.0f}",
                    f"{lat.p50:.0f} / {lat.p90:.0f} / {lat.p99:.0f}" if lat else "n/a",
                    f"{sum(res.statuses.values())} answered, {res.failures} failed, "
                    f"{sum(n for code, n in res.statuses.items() if not 200 <= int(code) < 300)}"
                    " non-2xx",
                    sampled.highest,
                    f"{after['pool']['checked_out']} ({after['status']})",
                )
            )
            print(
                f"round {number} in-process: {res.requests_per_second:.0f} req/s", file=sys.stderr
            )

        churns = []
        for number in range(1, args.churns + 1):
            c.sample_load()
            with ThreadsSampler(e) as sampled:
                churns.append(
                    {**churn(shared, app, tokens, location_id), "threads": sampled.highest}
                )
            print(f"churn {number}: {churns[-1]}", file=sys.stderr)
        after_churn = pool_of_each(shared, PROCESSES)
    finally:
        codes = [proc.stop() for proc in processes]
        if app is not None:
            shutdown_app(app)
        server.stop()
        tempfile.tempdir = None

    print("## Reference app as three processes behind one port\n")
    print(machine_text)
    print()
    print(
        f"`GET /api/locations`, {LOAD_REQUESTS} requests, {LOAD_CONCURRENCY} at a time, "
        "each app process with the seed's pool (pool_size 20, max_overflow 40); "
        "latency in ms (`ab`: whole milliseconds):\n"
    )
    print(
        c.table(
            (
                "round",
                "target",
                "req/s",
                "latency p50 / p90 / p99",
                "requests",
                "max Threads_connected during",
                "after: checked_out (status)",
            ),
            rows,
        )
    )
    print()
    print(
        c.table(
            (
                f"Socket.IO churn, {CLIENTS} drivers, {CHURN_CONCURRENCY} at a time, 3 processes",
                "median",
                "min",
                "max",
            ),
            [
                (
                    "every client connected, reported and disconnected (s)",
                    c.s(c.median(x["clients"] for x in churns)),
                    c.s(min(x["clients"] for x in churns)),
                    c.s(max(x["clients"] for x in churns)),
                ),
                (
                    "every buggy offline again (disconnect tasks done) (s)",
                    c.s(c.median(x["offline"] for x in churns)),
                    c.s(min(x["offline"] for x in churns)),
                    c.s(max(x["offline"] for x in churns)),
                ),
                (
                    "max Threads_connected during",
                    c.median(x["threads"] for x in churns),
                    min(x["threads"] for x in churns),
                    max(x["threads"] for x in churns),
                ),
            ],
        )
    )
    print()
    print(
        f"Buggies offline after each churn: {[x['offline_count'] for x in churns]} of "
        f"{CLIENTS}. After the churns, checked out per process: "
        f"{[p['pool']['checked_out'] for p in after_churn.values()]}."
    )
    print(f"The processes' start-up pool report: `{startup_warning.split(': ', 1)[-1]}`.")
    print(f"Exit codes of the app processes after SIGTERM: {codes}.")
    print()
    print(c.busy_note(start_load))
    print()
    print(work.report_cleanup())
    work.close()
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
