"""Connections of the test's child processes: who opened them, and the fork bug.

- A forked child inherits the tracker (and the traced drivers). From the fork on it
  writes what the parent needs to know into a report file of its own (one JSON line per
  event): the connections it opens, with their site, and every pooled connection of the
  parent it uses (SQLAlchemy's "Using Connection Pools with Multiprocessing or
  os.fork()": both processes then talk over one socket).
- A spawned child knows nothing of the plugin. ``multiprocessing``'s ``Process.start``
  (which ``ProcessPoolExecutor`` uses too) is traced in the parent, and a server
  connection is traced back to its process through its client TCP port
  (``/proc/net/tcp`` and ``/proc/PID/fd``, Linux): the site is then the line that
  started the child.

No pytest import.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.clientsockets import Client, client_of, tcp_sockets
from pytest_dbleak.engine.results import FORK_SHARED
from pytest_dbleak.engine.signals import interrupt_deferred
from pytest_dbleak.engine.stacks import Frame, capture_stack

__all__ = ["CONNECT", "FORK_SHARED", "ChildEvent", "Children", "Started"]

log = logging.getLogger(__name__)

CONNECT = "connect"  # a child opened a connection; FORK_SHARED: it used one of its parent's


@dataclass(frozen=True)
class Started:
    """Where the parent started a child process."""

    pid: int
    seq: int
    stack: tuple[Frame, ...]
    thread: str


@dataclass(frozen=True)
class ChildEvent:
    """One line of a child's report."""

    kind: str
    pid: int
    fork_seq: int  # the parent's sequence number when the child was forked
    thread_id: int | None  # the server connection
    stack: tuple[Frame, ...]
    thread: str
    parent_stack: tuple[Frame, ...] = ()  # FORK_SHARED: where the parent opened it


def _frames(data: Any) -> tuple[Frame, ...]:
    return tuple((str(f[0]), int(f[1]), str(f[2])) for f in data)


class Children:
    """The parent's record of its children; the child's side of the report files."""

    def __init__(self) -> None:
        self.parent_pid = os.getpid()
        self.dir: Path | None = None
        self.started: dict[int, Started] = {}
        self.fork_seq = -1  # in a forked child: the parent's seq at the fork
        self._lock = threading.Lock()
        self._patch: tuple[type, Any] | None = None
        self._events: list[ChildEvent] = []
        self.on_fork: list[Callable[[], None]] = []  # run first in a forked child
        self._seq: Callable[[], int] = lambda: -1

    @property
    def in_child(self) -> bool:
        return os.getpid() != self.parent_pid

    # -- installation (in the parent) ------------------------------------------------------
    def install(self, seq: Callable[[], int]) -> None:
        self._seq = seq
        with interrupt_deferred():  # a folder made but not yet ours could not be removed
            self.dir = Path(tempfile.mkdtemp(prefix="dbleak-children-"))
        _AT_FORK.append(self)
        _register_at_fork()
        self.trace_imported()

    def uninstall(self) -> None:
        if self in _AT_FORK:
            _AT_FORK.remove(self)
        if self._patch is not None:
            cls, original = self._patch
            cls.start = original  # type: ignore[attr-defined]
            self._patch = None
        if self.dir is not None and not self.in_child:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def trace_imported(self) -> None:
        """Trace multiprocessing's Process.start once multiprocessing is imported."""
        if self._patch is not None or "multiprocessing.process" not in sys.modules:
            return
        from multiprocessing.process import BaseProcess

        start = BaseProcess.start
        children = self

        @functools.wraps(start)
        def traced_start(process: Any) -> None:
            stack = capture_stack(1)
            start(process)
            if process.pid is not None:
                children.note_started(process.pid, stack)

        BaseProcess.start = traced_start  # type: ignore[method-assign,assignment]
        self._patch = (BaseProcess, start)

    def note_started(self, pid: int, stack: tuple[Frame, ...]) -> None:
        with self._lock:
            self.started[pid] = Started(pid, self._seq(), stack, threading.current_thread().name)
            if len(self.started) > 10_000:
                self.started.pop(next(iter(self.started)))

    # -- in a forked child ------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        for hook in self.on_fork:
            hook()
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self.fork_seq = self._seq()
        self.started = {}

    def report(
        self,
        kind: str,
        thread_id: int | None,
        stack: tuple[Frame, ...],
        parent_stack: tuple[Frame, ...] = (),
    ) -> None:
        """Tell the parent (from a forked child): one line, written at once."""
        if self.dir is None:
            return
        line = json.dumps(
            {
                "kind": kind,
                "pid": os.getpid(),
                "fork_seq": self.fork_seq,
                "thread_id": thread_id,
                "stack": [list(f) for f in stack],
                "thread": threading.current_thread().name,
                "parent_stack": [list(f) for f in parent_stack],
            }
        )
        try:
            with open(self.dir / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as exc:  # the parent is gone or cleaned up: nobody to tell
            log.debug("dbleak: child report not written: %s", exc)

    # -- in the parent ---------------------------------------------------------------------
    def events(self) -> list[ChildEvent]:
        """Every event children reported so far (read once, kept for later windows)."""
        if self.dir is None:
            return []
        with self._lock:
            for path in self._report_files():
                try:
                    text = path.read_text(encoding="utf-8")
                    path.unlink()
                except OSError:
                    continue
                for line in text.splitlines():
                    try:
                        data = json.loads(line)
                        self._events.append(
                            ChildEvent(
                                data["kind"],
                                int(data["pid"]),
                                int(data["fork_seq"]),
                                data["thread_id"],
                                _frames(data["stack"]),
                                data["thread"],
                                _frames(data.get("parent_stack", ())),
                            )
                        )
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a dying child
            del self._events[:-10_000]
            return list(self._events)

    def _report_files(self) -> Iterator[Path]:
        assert self.dir is not None
        with contextlib.suppress(OSError), os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name.endswith(".jsonl"):
                    yield Path(entry.path)

    def owner_of(self, host: str, server_port: int) -> int | None:
        """The child process (of any depth) that holds the server connection whose
        processlist Host is `host`; None for this process or when it cannot be told."""
        client = client_of(host)
        if client is None:
            return None
        return owner_pid(client, server_port, descendants(self.parent_pid))

    def opened_by_child(self, thread_id: int) -> ChildEvent | None:
        return next(
            (e for e in reversed(self.events()) if e.kind == CONNECT and e.thread_id == thread_id),
            None,
        )

    def starter_of(self, pid: int) -> Started | None:
        """Where the process `pid`, or the child of ours it descends from, was started."""
        for _ in range(16):
            started = self.started.get(pid)
            if started is not None:
                return started
            parent = _ppid(pid)
            if parent is None or parent in (0, 1, self.parent_pid):
                return None
            pid = parent
        return None


# os.register_at_fork() cannot be undone: one hook, for the Children objects installed.
_AT_FORK: list[Children] = []
_REGISTERED = False


def _register_at_fork() -> None:
    global _REGISTERED
    if not _REGISTERED:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _REGISTERED = True


def _after_fork_in_child() -> None:
    for children in _AT_FORK:
        children._after_fork_in_child()


# -- which process owns a server connection (Linux) ---------------------------------------
def owner_pid(client: Client, server_port: int, among: list[int]) -> int | None:
    """Which of the processes `among` holds the TCP socket of `client` (its local end)
    whose remote port is `server_port`; None where /proc does not tell."""
    inode = _socket_inode(client, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for pid in among:
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
    return None


def _socket_inode(client: Client, server_port: int) -> int | None:
    for sock in tcp_sockets():
        if sock.inode != 0 and client.matches(sock, server_port):
            return sock.inode
    return None


def descendants(root: int) -> list[int]:
    """The processes below `root` (children, grandchildren...), newest first."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                ppid = _ppid(int(name))
                if ppid is not None:
                    parents[int(name)] = ppid
    found: list[int] = []
    for pid in sorted(parents, reverse=True):
        ancestor, hops = parents.get(pid), 0
        while ancestor is not None and ancestor > 1 and hops < 16:
            if ancestor == root:
                found.append(pid)
                break
            ancestor, hops = parents.get(ancestor), hops + 1
    return found


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else None
