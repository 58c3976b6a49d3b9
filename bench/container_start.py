"""Docker backend vs process backend: server start to first login, side by side in one run.

    python bench/container_start.py [--image dbleak-mariadb:bookworm] [--runs 7]

Measures, on this machine, interleaved (docker, process, then process, docker, ...):

* in-process: ``backends.start_docker`` (image check, container create + start through
  testcontainers, a real login on 127.0.0.1) and ``embedded.start_process`` (copy the
  template, start mariadbd, a real login), each followed by ``stop()``; for docker the
  time from ``docker start`` returning to the first login is split out by wrapping the
  login wait (bench only);
* whole ``python -m pytest`` processes running one ``SELECT 1`` test on each backend.

The image is the local one built by ``tools/docker-image/build.sh`` (no registry is
reachable here, so the official image's start cannot be measured beside it). Docker is
reached through ``DOCKER_HOST`` (or ``--docker-host``); Ryuk is disabled for the runs,
as .ci/run does here: the plugin's own reaper removes every container.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common as c

TEST = """\
import sqlalchemy as sa


def test_select_1(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--image", default=os.environ.get("DBLEAK_TEST_DOCKER_IMAGE", "dbleak-mariadb:bookworm")
    )
    ap.add_argument(
        "--docker-host",
        default=os.environ.get("DBLEAK_TEST_DOCKER_HOST"),
        help="DOCKER_HOST for the runs (default: the environment's)",
    )
    ap.add_argument("--runs", type=int, default=7, help="runs of each (default 7)")
    ap.add_argument("--timeout", type=float, default=120, help="per start or subprocess (s)")
    ap.add_argument("--budget", type=float, default=600, help="overall time budget (s)")
    args = ap.parse_args()
    if args.docker_host:
        os.environ["DOCKER_HOST"] = args.docker_host
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"

    sys.path.insert(0, str(c.REPO))
    from pytest_dbleak.families.mysql import containers, embedded
    from pytest_dbleak.families.mysql import family as backends

    if not containers.docker_available():
        print("no Docker daemon answers (set DOCKER_HOST or --docker-host)", file=sys.stderr)
        return 2
    binary = embedded.find_mysqld(None)
    if binary is None:
        print("mariadbd not found", file=sys.stderr)
        return 2

    start_load = c.load()
    deadline = c.Deadline(args.budget)
    work = c.Workdir("container-start")
    cache = work.path / "cache"
    embedded.ensure_template(binary, cache)
    project = work.path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_one.py").write_text(TEST)
    env = work.env()

    # The login wait of the docker backend, timed from its start (bench only).
    login_waits: list[float] = []
    real_wait = containers._wait_for_login

    def timed_wait(*a: object, **kw: object) -> None:
        t0 = time.perf_counter()
        real_wait(*a, **kw)  # type: ignore[arg-type]
        login_waits.append(time.perf_counter() - t0)

    containers._wait_for_login = timed_wait  # type: ignore[assignment]

    def start_docker() -> backends.RunningServer:
        return backends.start_docker(args.image, args.timeout)

    def start_process() -> backends.RunningServer:
        return embedded.start_process(binary, cache, args.timeout)

    starts = {"docker": start_docker, "process": start_process}
    sessions = {
        name: [
            *c.PYTEST,
            "-q",
            "-p",
            "pytest_dbleak.plugin",
            "--dbleak",
            f"--dbleak-backend={name}",
            f"--dbleak-image={args.image}",
            f"--dbleak-cache-dir={cache}",
            "test_one.py",
        ]
        for name in starts
    }
    up: dict[str, list[float]] = {k: [] for k in starts}
    down: dict[str, list[float]] = {k: [] for k in starts}
    walls: dict[str, list[float]] = {k: [] for k in starts}
    failures: dict[str, list[str]] = {}

    for i in range(args.runs + 1):  # round 0 warms up
        order = list(starts) if i % 2 == 0 else list(reversed(starts))
        waits_before = len(login_waits)
        for name in order:
            t0 = time.perf_counter()
            try:
                server = starts[name]()
            except backends.DbleakError as exc:
                failures.setdefault(name, []).append(str(exc)[:200])
                continue
            t1 = time.perf_counter()
            server.stop()
            t2 = time.perf_counter()
            try:
                wall, _ = c.run(sessions[name], cwd=project, env=env, timeout=args.timeout)
            except c.RunFailed as exc:
                failures.setdefault(f"session {name}", []).append(str(exc)[-200:])
                wall = None
            if i:
                up[name].append(t1 - t0)
                down[name].append(t2 - t1)
                if wall is not None:
                    walls[name].append(wall)
        if not i:
            del login_waits[waits_before:]
        print(
            f"round {i}/{args.runs}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in up.items() if v),
            file=sys.stderr,
        )
        c.sample_load()
        if deadline.expired():
            break

    print("# Server start to first login: docker backend vs process backend\n")
    print(c.machine_table([("image", args.image), ("work dir", str(work.path))]))
    print()

    def row(label: str, values: list[float]) -> tuple[str, str, str, int]:
        if not values:
            return (label, "failed", "", 0)
        return (label, c.s(c.median(values)), f"{min(values):.2f} - {max(values):.2f}", len(values))

    print(
        c.table(
            ("step (in-process, interleaved)", "median (s)", "min - max (s)", "runs"),
            [
                row(
                    "docker: start to first login (image check, create + start, login)",
                    up["docker"],
                ),
                row("docker: of which `docker start` returned to first login", login_waits),
                row(
                    "process: start to first login (copy template, mariadbd, login)", up["process"]
                ),
                row("docker: stop (reaper removes the container)", down["docker"]),
                row("process: stop (reaper kills mariadbd, removes the datadir)", down["process"]),
            ],
        )
    )
    print()
    print(
        c.table(
            ("whole `python -m pytest`, one SELECT 1 test", "median (s)", "min - max (s)", "runs"),
            [
                row("--dbleak-backend=docker", walls["docker"]),
                row("--dbleak-backend=process", walls["process"]),
            ],
        )
    )
    print()
    if up["docker"] and up["process"]:
        ratio = c.median(up["docker"]) / c.median(up["process"])
        print(f"docker / process, start to first login: {ratio:.1f}x\n")
    if failures:
        print(
            c.table(
                ("failed", "count", "last error"),
                [(k, len(v), v[-1].replace("|", "/")) for k, v in failures.items()],
            )
        )
        print()
    print(c.busy_note(start_load))
    print(deadline.note())
    work.close()
    print(work.report_cleanup())
    return 0


if __name__ == "__main__":
    sys.exit(main())
