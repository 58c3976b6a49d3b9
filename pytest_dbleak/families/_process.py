"""What every family's process backend shares: a fresh folder, a free port, a server
started under a reaper that outlives pytest, and its stop.

No pytest import.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.signals import interrupts_held, keep_out_of_forks


def kill_group(proc: subprocess.Popen[str]) -> None:
    with interrupts_held():
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def usable_cache(cache: Path) -> None:
    """Create the cache folder if need be and write in it, or say in one line why not."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=cache)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if cache.exists() and not cache.is_dir():
            wrong = "it is a file, not a folder"
        elif cache.is_dir():
            wrong = f"cannot write in it ({exc.strerror or exc})"
        else:
            parent = next((p for p in cache.parents if p.exists()), cache.anchor)
            wrong = f"cannot create it under {parent} ({exc.strerror or exc})"
        raise DbleakError(
            f"the template cache folder {cache} cannot be used: {wrong}; "
            "choose another with --dbleak-cache-dir"
        ) from None


def session_parent() -> str | None:
    """Where a session's datadir goes: memory-backed /dev/shm when it has room.

    A throwaway server needs no durability, and on tmpfs both the copy of the template
    and the server's start are about twice as fast as on disk. TMPDIR, when set, wins.
    """
    if os.environ.get("TMPDIR"):
        return None
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    return "/dev/shm" if free > 512 * 1024 * 1024 and os.access("/dev/shm", os.W_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The reaper owns the server. It waits for EOF on its stdin, which only pytest holds
# open: when pytest ends for any reason (exit, Ctrl-C, SIGKILL) the pipe closes and
# the reaper kills the server and removes its files. It runs in its own session so a
# Ctrl-C in the terminal reaches pytest only.
# It also copies the template first (when given one): the copy then runs on another core
# while pytest imports and collects, instead of in pytest's thread (~30-40 ms of every
# cold session). Sparse, where cp can: the template's InnoDB and WAL files are mostly
# zeroes, and a copy in /dev/shm is memory.
_REAPER = r"""
dir=$1; from=$2; into=$3; shift 3
if [ -n "$from" ]; then
  if ! cp -a --sparse=always -- "$from" "$into" 2>/dev/null; then
    rm -rf -- "$into"
    if ! out=$(cp -a -- "$from" "$into" 2>&1); then
      echo "error: $out"
      rm -rf -- "$dir"
      exit 1
    fi
  fi
fi
"$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
while read -r _; do :; done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
"""


class ReadyNotice:
    """The server's own word that it takes connections: the systemd notify protocol.

    A server built with libsystemd (Debian's mariadbd and postgres) sends ``READY=1`` to
    the datagram socket named in ``NOTIFY_SOCKET`` the moment it accepts connections, so
    the start-up is awaited as an event instead of polled with logins. A server without
    it never writes here: ``wait`` then simply times out, and the caller's login probe
    (its fallback) decides.
    """

    def __init__(self, root: Path) -> None:
        self.path = str(root / "notify.sock")
        self.ready = False
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self.path)
        except OSError:  # a path too long for AF_UNIX, a read-only folder: poll instead
            self.close()

    def env(self) -> dict[str, str]:
        """The environment to start the server with: ours as its notify socket, never
        one pytest inherited (under a systemd unit, the server would tell systemd)."""
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        if self._sock is not None:
            env["NOTIFY_SOCKET"] = self.path
        return env

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for ``READY=1``; True once it came."""
        while not self.ready and self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                break
            self.ready = b"READY=1" in self._sock.recv(4096).split(b"\n")
            timeout = 0  # drain what else is queued, never wait again
        return self.ready

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Reaped:
    """A server set off under its reaper: ``proc`` is the reaper, ``pid()`` the server's
    pid, known once the reaper has copied the template and started it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._pid: int | None = None

    def pid(self, timeout: float = 60) -> int:
        """The server's pid (waits up to `timeout` s for the copy); a failed or stuck
        copy is a DbleakError."""
        if self._pid is None:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise DbleakError(
                    f"the server could not be started: copying its template took over {timeout:g} s"
                )
            line = self.proc.stdout.readline()
            if not line.strip().isdigit():
                said = " ".join([line, *self.proc.stdout.read().splitlines()]).strip()
                self.proc.stdout.close()
                said = said.removeprefix("error: ") or "its reaper ended before starting it"
                raise DbleakError(f"the server could not be started: {said}")
            self._pid = int(line)
            self.proc.stdout.close()
        return self._pid


def spawn_under_reaper(
    root: Path,
    cmd: list[str],
    env: dict[str, str] | None = None,
    copy: tuple[Path, Path] | None = None,
) -> Reaped:
    """Start `cmd` under a reaper that kills it and removes `root` once pytest ends,
    after copying ``copy[0]`` to ``copy[1]`` when given; returns at once."""
    source, target = ("", "") if copy is None else (str(copy[0]), str(copy[1]))
    reaper = subprocess.Popen(
        ["/bin/sh", "-c", _REAPER, "dbleak-reaper", str(root), source, target, *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    keep_out_of_forks(reaper.stdin)
    return Reaped(reaper)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False
    except OSError:
        return True  # no procfs: assume alive and rely on the deadline


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for process `pid` to exit; True once it has.

    Awaited as an event (a pidfd turns readable when the process ends): ``Popen.wait``
    with a timeout polls with doubling sleeps, so a stop taking 17 ms was seen at 32 ms,
    every cold session paying the difference. A zombie counts as exited: its parent
    reaps it (for our own child, the ``Popen.wait`` that follows).
    """
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
            time.sleep(0.005)
    return not alive(pid)


def wait_child(proc: subprocess.Popen[str], timeout: float) -> int:
    """``proc.wait(timeout)`` without its polling (see wait_exit); raises
    ``subprocess.TimeoutExpired`` the same way."""
    if proc.poll() is None and not wait_exit(proc.pid, timeout):
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def stop_reaper(reaper: subprocess.Popen[str] | None) -> None:
    if reaper is None:
        return
    for pipe in (reaper.stdin, reaper.stdout):  # EOF tells the reaper to stop
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if reaper.poll() is not None:
        return
    try:
        wait_child(reaper, 30)
    except subprocess.TimeoutExpired:
        os.killpg(reaper.pid, signal.SIGKILL)
        reaper.wait()
