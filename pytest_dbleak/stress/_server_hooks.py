"""Instrumentation of a python-socketio server for the duration of one churn."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection
from typing import Any

from pytest_dbleak.stress import _upstream
from pytest_dbleak.stress._common import join_all, remaining

_UNSET = object()


class SocketIOServerHooks:
    """Instrument a python-socketio server for the duration of one churn.

    * ``eio.start_background_task`` is wrapped to track every thread the
      server starts (Socket.IO event handlers run in such tasks, and
      ``socketio.start_background_task`` ends up here too) and to record
      exceptions they raise.
    * ``eio.sleep`` is wrapped so that Engine.IO's per-connection ping timers,
      which otherwise sleep ``ping_interval`` (25 s) after their client has
      gone, can be woken when the churn is over.
    * ``server._trigger_event`` is wrapped to learn when the application's
      disconnect handler has returned for each sid.
    * Engine.IO's client-monitor task, started on the first connection and
      running until ``eio.shutdown()``, is kept from starting.

    And it closes two thread-safety gaps that a churn on a busy machine runs into,
    each of which would fail the churn for no fault of the application (see
    :mod:`._upstream`): the client manager's methods are serialised, and Engine.IO's
    WebSocket wrapper is replaced by one whose ``close()`` tolerates a close handshake
    that simple-websocket's reader thread has just completed.

    :meth:`uninstall` restores every attribute exactly as it was.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._eio = server.eio
        self._cond = threading.Condition()
        self._tasks: list[threading.Thread] = []
        self._ping_tasks: list[threading.Thread] = []
        self._disconnected: set[tuple[str, str]] = set()
        self._failures: list[tuple[str, BaseException]] = []
        self._release_pings = threading.Event()
        self._thread_flags = threading.local()
        self._saved: list[tuple[object, str, bool, object]] = []
        self._saved_monitor_flag: object = _UNSET
        self._manager_lock = threading.RLock()
        self.disconnects = 0

    # -- install / uninstall ------------------------------------------------

    def install(self) -> None:
        _upstream.check_server(self._server)
        try:
            self._original_start = self._patch(
                self._eio, "start_background_task", self._start_background_task
            )
            self._original_sleep = self._patch(self._eio, "sleep", self._sleep)
            self._original_trigger = self._patch(
                self._server, _upstream.TRIGGER_EVENT, self._trigger_event
            )
            manager = self._server.manager
            for name, locked in _upstream.serialise_manager(manager, self._manager_lock):
                self._patch(manager, name, locked)
            self._patch(self._eio, _upstream.DRIVER_TABLE, _upstream.websocket_drivers(self._eio))
            self._saved_monitor_flag = getattr(self._eio, _upstream.SERVICE_TASK_FLAG)
            setattr(self._eio, _upstream.SERVICE_TASK_FLAG, False)
        except BaseException:
            self._restore()
            raise

    def uninstall(self, deadline: float) -> list[threading.Thread]:
        """Wake and join the ping timers, then restore the server; return timers still alive."""
        try:
            self._release_pings.set()
            with self._cond:
                pings = list(self._ping_tasks)
            # Restore only after the timers are joined: one restored before it
            # reached sleep() would call the real sleep and linger for 25 s.
            return join_all(pings, deadline)
        finally:
            self._restore()

    def _patch(self, obj: object, name: str, replacement: object) -> Any:
        had_own = name in vars(obj)
        original = getattr(obj, name)
        self._saved.append((obj, name, had_own, vars(obj).get(name)))
        setattr(obj, name, replacement)
        return original

    def _restore(self) -> None:
        while self._saved:
            obj, name, had_own, value = self._saved.pop()
            if had_own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        if self._saved_monitor_flag is not _UNSET:
            setattr(self._eio, _upstream.SERVICE_TASK_FLAG, self._saved_monitor_flag)
            self._saved_monitor_flag = _UNSET

    # -- wrappers -----------------------------------------------------------

    def _start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        is_ping = _upstream.is_ping_task(target)

        @functools.wraps(target)  # keeps the thread named after the real target
        def run_task() -> None:
            self._thread_flags.wakeable_sleep = is_ping
            try:
                target(*args, **kwargs)
            except Exception as exc:
                self._record_failure(
                    f"server background task {threading.current_thread().name}", exc
                )
                raise

        task = self._original_start(run_task)
        with self._cond:
            (self._ping_tasks if is_ping else self._tasks).append(task)
        return task

    def _sleep(self, seconds: float = 0) -> None:
        if getattr(self._thread_flags, "wakeable_sleep", False):
            self._release_pings.wait(seconds)
        else:
            self._original_sleep(seconds)

    def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event != "disconnect":
            return self._original_trigger(event, namespace, *args)
        sid = args[0] if args else None
        try:
            return self._original_trigger(event, namespace, *args)
        except Exception as exc:
            self._record_failure(f"disconnect handler for sid {sid} (namespace {namespace!r})", exc)
            raise
        finally:
            with self._cond:
                self._disconnected.add((namespace or "/", str(sid)))
                self.disconnects += 1
                self._cond.notify_all()

    def _record_failure(self, what: str, exc: BaseException) -> None:
        with self._cond:
            self._failures.append((what, exc))

    # -- waits --------------------------------------------------------------

    @property
    def failures(self) -> list[tuple[str, BaseException]]:
        with self._cond:
            return list(self._failures)

    @property
    def task_count(self) -> int:
        with self._cond:
            return len(self._tasks)

    def wait_for_disconnects(
        self, namespace: str, sids: Collection[str], deadline: float
    ) -> set[str]:
        """Wait until the disconnect handler returned for every sid; return sids still missing."""
        expected = {(namespace, sid) for sid in sids}
        with self._cond:
            self._cond.wait_for(lambda: expected <= self._disconnected, remaining(deadline))
            return {sid for _, sid in expected - self._disconnected}

    def join_tasks(self, deadline: float) -> list[threading.Thread]:
        """Join every tracked task, including ones started meanwhile; return those still alive."""
        joined = 0
        while True:
            with self._cond:
                batch = self._tasks[joined:]
            if not batch:
                return []
            alive = join_all(batch, deadline)
            if alive:
                return alive
            joined += len(batch)
