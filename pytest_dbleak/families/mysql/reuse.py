"""``--dbleak-reuse``: a process-backend server that outlives the session, for the local loop.

No pytest import. The first session starts mariadbd under a *watcher* (this module
run as ``python -m pytest_dbleak.families.mysql.reuse``, detached), secures it, and
writes a state file in the cache folder; later sessions of the same binary, cache
folder and OS user find it there and only create their own database and user, as on
the url backend (session lock, sweep of dead sessions, drop at the end), so that
verdicts are those of a fresh server.

Files in the cache folder, per template key (binary, its size and mtime, OS user):

- ``reuse-KEY.lock``: held (``flock`` exclusive) while the state is read, a server is
  started or replaced, or one is stopped: a session never joins a server being stopped.
- ``reuse-KEY.json`` (mode 0600): pids, port, socket, folder and admin password.
- ``reuse-KEY.sessions``: every live session holds a shared ``flock`` on it; the watcher
  stops the server once nobody has held it for the idle time. The kernel drops a killed
  session's lock, so a crash never keeps a server up.

A state whose watcher or server is gone, or whose admin login fails, is stale: the next
session kills what is left of it and starts a new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.signals import keep_out_of_forks
from pytest_dbleak.families.base import Launch, RunningServer
from pytest_dbleak.families.mysql.monitor import Endpoint

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

    def endpoint(self) -> Endpoint:
        from pytest_dbleak.families.mysql.embedded import ADMIN_USER

        return Endpoint("127.0.0.1", self.port, ADMIN_USER, self.password, unix_socket=self.socket)


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
    from pytest_dbleak.families._process import alive

    return pid > 0 and alive(pid) and mark in _cmdline(pid)


def _healthy(state: State) -> bool:
    if not (_ours(state.watcher, state.root) and _ours(state.server, state.root)):
        return False
    try:
        state.endpoint().connect(timeout=2, read_timeout=5).close()
    except Exception as exc:  # noqa: BLE001 - any failure to log in makes it stale
        log.info("dbleak: the reused server does not answer (%s); replacing it", exc)
        return False
    return True


def _discard(state: State) -> None:
    """Kill what is left of a stale server and remove its folder (state lock held)."""
    for pid in (state.watcher, state.server):
        if _ours(pid, state.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone(state.server, 10)
    shutil.rmtree(state.root, ignore_errors=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for another process (not our child) to exit: a pidfd turns readable then."""
    from pytest_dbleak.families._process import alive

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone already, or no pidfd (Linux < 5.3)
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
    else:
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    # A zombie is gone for us: its parent (the watcher, or init) reaps it.
    return not alive(pid)


def _hold_session(paths: _Paths) -> IO[str]:
    """A shared lock on the sessions file for as long as this session lives."""
    handle = open(paths.sessions, "a")  # noqa: SIM115 - held until the session ends
    fcntl.flock(handle, fcntl.LOCK_SH)
    keep_out_of_forks(handle)  # a forked child that outlives the run must not hold it
    return handle


def _release(handle: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        handle.close()


def launch(binary: str | None, cache: Path, timeout: float, idle: float) -> Launch:
    """Join this user's reused server for `binary` in `cache`, or start one that stays."""
    from pytest_dbleak.families.mysql.embedded import _template_key, ensure_template

    if binary is None:
        raise DbleakError("no mariadbd or mysqld found on PATH (or give --dbleak-mysqld)")
    template = ensure_template(binary, cache)
    paths = _Paths.of(cache, _template_key(binary))
    lock = open(paths.lock, "a")  # noqa: SIM115 - held until wait() or cancel()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read(paths.state)
        if state is not None and _healthy(state):
            session = _hold_session(paths)
            lock.close()
            age = time.time() - state.started
            note = f"reusing the server started {age:.0f} s ago"
            return Launch(lambda: _running(state, session, note), lambda: _release(session))
        if state is not None:
            _discard(state)
            paths.state.unlink(missing_ok=True)
        return _start(binary, template, paths, lock, timeout, idle)
    except BaseException:
        lock.close()
        raise


def _running(state: State, session: IO[str], note: str) -> RunningServer:
    # owned=False: the url backend's path - session lock, sweep of dead sessions, our own
    # user only in the checks, our database dropped at the end. The server stays.
    return RunningServer(
        "process",
        state.endpoint(),
        owned=False,
        stop=lambda: _release(session),
        notes=[f"{note} (--dbleak-reuse; `python -m pytest_dbleak stop` stops it)"],
    )


def _start(
    binary: str, template: Path, paths: _Paths, lock: IO[str], timeout: float, idle: float
) -> Launch:
    from pytest_dbleak.families.mysql.embedded import (
        _wait_and_secure,
        free_port,
        server_command,
        server_root,
    )

    root = server_root(template, prefix="dbleak-reuse-")
    port = free_port()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_dbleak.families.mysql.reuse",
            str(root),
            str(paths.lock),
            str(paths.state),
            str(paths.sessions),
            repr(idle),
            "--",
            *server_command(binary, root, port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # Ctrl-C in the terminal reaches pytest only
    )

    def cancel() -> None:
        with contextlib.suppress(ProcessLookupError):
            watcher.kill()
        watcher.wait()
        shutil.rmtree(root, ignore_errors=True)
        lock.close()

    def wait() -> RunningServer:
        try:
            assert watcher.stdout is not None
            line = watcher.stdout.readline()
            watcher.stdout.close()
            if not line.strip().isdigit():
                raise DbleakError("the reused server's watcher exited at start")
            pid = int(line)
            password = secrets.token_hex(16)
            sock = str(root / "mysqld.sock")
            _wait_and_secure(sock, pid, password, timeout, root / "error.log")
            state = State(watcher.pid, pid, port, sock, str(root), password, binary, time.time())
            _write(paths.state, state)
            session = _hold_session(paths)
        except BaseException:
            cancel()
            raise
        lock.close()
        return _running(state, session, f"started a server that stays up for {idle:g} s idle")

    return Launch(wait, cancel)


def stop_all(cache: Path) -> list[str]:
    """Stop every reused server in `cache` (this OS user's files); what was stopped."""
    stopped = []
    for state_path in sorted(cache.glob("reuse-*.json")):
        paths = _Paths.of(cache, state_path.stem.removeprefix("reuse-"))
        with _locked(paths.lock):
            state = _read(paths.state)
            if state is None:
                continue
            if _ours(state.watcher, state.root):
                os.kill(state.watcher, signal.SIGTERM)  # it stops the server and cleans up
                if not _wait_gone(state.watcher, 30):
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
        server = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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
        with contextlib.suppress(ProcessLookupError):
            server.kill()
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
            "usage: python -m pytest_dbleak.families.mysql.reuse "
            "ROOT LOCK STATE SESSIONS IDLE -- CMD..."
        )
        return 2
    _Watcher(Path(root), _Paths(Path(lock), Path(state), Path(sessions)), float(idle)).run(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
