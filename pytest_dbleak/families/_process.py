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
_REAPER = r"""
dir=$1; shift
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


def spawn_under_reaper(
    root: Path, cmd: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start `cmd` under a reaper that kills it and removes `root` once pytest ends;
    returns the reaper and the server's pid."""
    reaper = subprocess.Popen(
        ["/bin/sh", "-c", _REAPER, "dbleak-reaper", str(root), *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    keep_out_of_forks(reaper.stdin)
    assert reaper.stdout is not None
    pid = int(reaper.stdout.readline())
    reaper.stdout.close()
    return reaper, pid


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False
    except OSError:
        return True  # no procfs: assume alive and rely on the deadline


def stop_reaper(reaper: subprocess.Popen[str] | None) -> None:
    if reaper is None or reaper.poll() is not None:
        return
    assert reaper.stdin is not None
    with contextlib.suppress(OSError):
        reaper.stdin.close()
    try:
        reaper.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(reaper.pid, signal.SIGKILL)
        reaper.wait()
