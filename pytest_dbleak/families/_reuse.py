"""``--dbleak-reuse``, what every family shares: a process-backend server that outlives
the session, for the local loop.

No pytest import. The first session starts the server under a *watcher* (this module run
as ``python -m pytest_dbleak.families._reuse``, detached), secures it, and writes a state
file in the cache folder; later sessions of the same family, binary, cache folder and OS
user find it there and only create their own database and user, as on the url backend
(session lock, sweep of dead sessions, drop at the end), so that verdicts are those of a
fresh server. A family gives its part as a ``ReuseFamily``: how to prepare the server's
folder and command line, how to secure it once it runs, its admin endpoint, a login.

Files in the cache folder, per key (the family's template key; PostgreSQL's starts with
``pg-``, so the families' files never collide):

- ``reuse-KEY.lock``: held (``flock`` exclusive) while the state is read, a server is
  started or replaced, or one is stopped: a session never joins a server being stopped.
- ``reuse-KEY.json`` (mode 0600): pids, port, socket, folder and admin password.
- ``reuse-KEY.sessions``: every live session holds a shared ``flock`` on it; the watcher
  stops the server once nobody has held it for the idle time. The kernel drops a killed
  session's lock, so a crash never keeps a server up.

A state whose watcher or server is gone, or whose admin login fails, is stale: the next
session kills what is left of it and starts a new one. The watcher starts the server in a
process group of its own and stops it by killing that group, so that a server with
child processes (PostgreSQL's) leaves none behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.signals import keep_out_of_forks
from pytest_dbleak.families._process import alive, wait_exit
from pytest_dbleak.families.base import Launch, RunningServer

log = logging.getLogger(__name__)

_POLL = 0.5  # how often the watcher looks at the session lock and the server


@dataclass(frozen=True)
class State:
    """What a session needs to find and trust a running server."""

    watcher: int
    server: int
    port: int
    socket: str
    root: str
    password: str
    binary: str
    started: float


@dataclass(frozen=True)
class Prepared:
    """A server ready to start: its own folder, its port, its socket, its command."""

    root: Path
    port: int
    socket: str
    cmd: list[str]


class ReuseFamily(Protocol):
    """A family's part of a reused server."""

    @property
    def key(self) -> str:
        """Names the state files: unique per family, binary and OS user."""
        ...

    @property
    def binary(self) -> str: ...

    def prepare(self) -> Prepared:
        """A fresh folder (a copy of the template), a port, the server's command line."""
        ...

    def secure(self, prepared: Prepared, pid: int, password: str, timeout: float) -> None:
        """Wait for the started server's first login, then give its admin `password`."""
        ...

    def endpoint(self, state: State) -> Any:
        """The admin endpoint of the server a state describes."""
        ...

    def check_login(self, state: State) -> None:
        """Log in as the admin, or raise: a server that refuses is stale."""
        ...


@dataclass(frozen=True)
class _Paths:
    lock: Path
    state: Path
    sessions: Path

    @classmethod
    def of(cls, cache: Path, key: str) -> _Paths:
        base = cache / f"reuse-{key}"
        return cls(
            base.with_suffix(".lock"), base.with_suffix(".json"), base.with_suffix(".sessions")
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> State | None:
    try:
        return State(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("dbleak: ignoring the unreadable reuse state %s: %s", path, exc)
        return None


def _write(path: Path, state: State) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a password inside
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle)
    os.replace(tmp, path)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, mark: str) -> bool:
    """pid runs and is what we started (its command line names our folder): a pid that
    the system gave to another process since is never signalled."""
    return pid > 0 and alive(pid) and mark in _cmdline(pid)


def _healthy(family: ReuseFamily, state: State) -> bool:
    if not (_ours(state.watcher, state.root) and _ours(state.server, state.root)):
        return False
    try:
        family.check_login(state)
    except Exception as exc:  # noqa: BLE001 - any failure to log in makes it stale
        log.info("dbleak: the reused server does not answer (%s); replacing it", exc)
        return False
    return True


def _kill_server(pid: int) -> None:
    """SIGKILL the server and, when it leads its own group (the watcher started it so),
    its children too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _discard(state: State) -> None:
    """Kill what is left of a stale server and remove its folder (state lock held)."""
    if _ours(state.watcher, state.root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.watcher, signal.SIGKILL)
    if _ours(state.server, state.root):
        _kill_server(state.server)
    wait_exit(state.server, 10)
    shutil.rmtree(state.root, ignore_errors=True)


def _hold_session(paths: _Paths) -> IO[str]:
    """A shared lock on the sessions file for as long as this session lives."""
    handle = open(paths.sessions, "a")  # noqa: SIM115 - held until the session ends
    fcntl.flock(handle, fcntl.LOCK_SH)
    keep_out_of_forks(handle)  # a forked child that outlives the run must not hold it
    return handle


def _release(handle: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        handle.close()


def launch(family: ReuseFamily, cache: Path, timeout: float, idle: float) -> Launch:
    """Join this user's reused server of `family` in `cache`, or start one that stays."""
    paths = _Paths.of(cache, family.key)
    lock = open(paths.lock, "a")  # noqa: SIM115 - held until wait() or cancel()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read(paths.state)
        if state is not None and _healthy(family, state):
            session = _hold_session(paths)
            lock.close()
            age = time.time() - state.started
            note = f"reusing the server started {age:.0f} s ago"
            return Launch(lambda: _running(family, state, session, note), lambda: _release(session))
        if state is not None:
            _discard(state)
            paths.state.unlink(missing_ok=True)
        return _start(family, paths, lock, timeout, idle)
    except BaseException:
        lock.close()
        raise


def _running(family: ReuseFamily, state: State, session: IO[str], note: str) -> RunningServer:
    # owned=False: the url backend's path - session lock, sweep of dead sessions, our own
    # user only in the checks, our database dropped at the end. The server stays.
    return RunningServer(
        "process",
        family.endpoint(state),
        owned=False,
        stop=lambda: _release(session),
        notes=[f"{note} (--dbleak-reuse; `python -m pytest_dbleak stop` stops it)"],
    )


def _start(
    family: ReuseFamily, paths: _Paths, lock: IO[str], timeout: float, idle: float
) -> Launch:
    prepared = family.prepare()
    try:
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_dbleak.families._reuse",
                str(prepared.root),
                str(paths.lock),
                str(paths.state),
                str(paths.sessions),
                repr(idle),
                "--",
                *prepared.cmd,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C in the terminal reaches pytest only
        )
    except BaseException:
        shutil.rmtree(prepared.root, ignore_errors=True)
        raise

    pid: list[int] = []  # the server's, once the watcher said it

    def cancel() -> None:
        with contextlib.suppress(ProcessLookupError):
            watcher.kill()  # it leaves its server, which it started in a group of its own
        watcher.wait()
        if pid:
            _kill_server(pid[0])
        shutil.rmtree(prepared.root, ignore_errors=True)
        lock.close()

    def wait() -> RunningServer:
        try:
            assert watcher.stdout is not None
            line = watcher.stdout.readline()
            watcher.stdout.close()
            if not line.strip().isdigit():
                raise DbleakError("the reused server's watcher exited at start")
            pid.append(int(line))
            password = secrets.token_hex(16)
            family.secure(prepared, pid[0], password, timeout)
            state = State(
                watcher.pid,
                pid[0],
                prepared.port,
                prepared.socket,
                str(prepared.root),
                password,
                family.binary,
                time.time(),
            )
            _write(paths.state, state)
            session = _hold_session(paths)
        except BaseException:
            cancel()
            raise
        lock.close()
        note = f"started a server that stays up for {idle:g} s idle"
        return _running(family, state, session, note)

    return Launch(wait, cancel)


def stop_all(cache: Path) -> list[str]:
    """Stop every reused server in `cache` (this OS user's files, every family's); what
    was stopped."""
    stopped = []
    for state_path in sorted(cache.glob("reuse-*.json")):
        paths = _Paths.of(cache, state_path.stem.removeprefix("reuse-"))
        with _locked(paths.lock):
            state = _read(paths.state)
            if state is None:
                continue
            if _ours(state.watcher, state.root):
                os.kill(state.watcher, signal.SIGTERM)  # it stops the server and cleans up
                if not wait_exit(state.watcher, 30):
                    _discard(state)
            _discard(state)  # whatever the watcher left (or a stale state's leftovers)
            paths.state.unlink(missing_ok=True)
            stopped.append(f"the server at 127.0.0.1:{state.port} (pid {state.server})")
    return stopped


# -- the watcher ---------------------------------------------------------------------------
class _Watcher:
    """Runs the server; stops it when no session held the sessions lock for `idle` s."""

    def __init__(self, root: Path, paths: _Paths, idle: float) -> None:
        self.root = root
        self.paths = paths
        self.idle = idle
        self.stopping = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def sessions_free(self) -> bool:
        with open(self.paths.sessions, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True  # closing the file drops the lock at once

    def try_lock(self) -> IO[str] | None:
        """The state lock, unless someone holds it (a session joining, or `stop`)."""
        handle = open(self.paths.lock, "a")  # noqa: SIM115 - returned to the caller
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    def run(self, cmd: list[str]) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        # Never pytest's NOTIFY_SOCKET: under a systemd unit, the server would tell systemd.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        server = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a group of its own: its children die with it (killpg)
        )
        print(server.pid, flush=True)
        sys.stdout.close()
        held: IO[str] | None = None
        idle_since: float | None = None
        while not self.stopping and server.poll() is None:
            if not self.sessions_free():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle:
                held = self.try_lock()  # no session may join while we stop
                if held is not None and self.sessions_free():
                    break
                if held is not None:
                    held.close()
                    held = None
                idle_since = None
            time.sleep(_POLL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)  # the server and what it started
        server.wait()
        shutil.rmtree(self.root, ignore_errors=True)
        if held is None and not self.stopping:  # the server died: drop its state too
            for _ in range(200):
                held = self.try_lock()
                if held is not None:
                    break
                time.sleep(0.05)
        if held is not None:
            state = _read(self.paths.state)
            if state is not None and state.watcher == os.getpid():
                self.paths.state.unlink(missing_ok=True)
            held.close()


def _main(argv: list[str]) -> int:
    root, lock, state, sessions, idle, dashes, *cmd = argv
    if dashes != "--" or not cmd:
        print(
            "usage: python -m pytest_dbleak.families._reuse ROOT LOCK STATE SESSIONS IDLE -- CMD..."
        )
        return 2
    _Watcher(Path(root), _Paths(Path(lock), Path(state), Path(sessions)), float(idle)).run(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
