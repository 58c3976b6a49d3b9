"""Connection pool monitoring, judged by the seed's alarm criteria.

Warning: pool use above 80 %, overflow connections in use, session clean-up
errors. Critical: pool use above 95 %, no connection available, overflow in use
continuously, connection time-outs. "Use" and "available" are measured against
the process's ceiling (pool_size + max_overflow): past it a checkout waits
pool_timeout seconds and then fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from .claims import instance_id
from .extensions import db
from .models import utcnow

logger = logging.getLogger(__name__)

HEALTHY, WARNING, CRITICAL = "healthy", "warning", "critical"
_RANK = {HEALTHY: 0, WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True)
class PoolSnapshot:
    pool_size: int
    max_overflow: int
    checked_out: int
    checked_in: int
    overflow: int  # overflow connections in existence (0 when within pool_size)

    @property
    def ceiling(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def available(self) -> int:
        """Checkouts still possible without waiting."""
        return max(self.ceiling - self.checked_out, 0)

    @property
    def usage(self) -> float:
        return self.checked_out / self.ceiling if self.ceiling else 0.0


@dataclass(frozen=True)
class Thresholds:
    warning_usage: float = 0.80
    critical_usage: float = 0.95
    overflow_critical_seconds: float = 300.0


@dataclass
class Judgement:
    status: str = HEALTHY
    warnings: list[str] = field(default_factory=list)

    def raise_to(self, status: str, message: str) -> None:
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        self.warnings.append(message)


def judge_pool(
    snapshot: PoolSnapshot, thresholds: Thresholds, *, overflow_seconds: float | None
) -> Judgement:
    """Judge the pool's numbers alone. ``overflow_seconds``: how long overflow
    has been seen in use without a break (None when it is not in use)."""
    verdict = Judgement()
    percent = f"{snapshot.usage:.0%} ({snapshot.checked_out}/{snapshot.ceiling})"
    if snapshot.usage > thresholds.critical_usage:
        verdict.raise_to(CRITICAL, f"pool use above {thresholds.critical_usage:.0%}: {percent}")
    elif snapshot.usage > thresholds.warning_usage:
        verdict.raise_to(WARNING, f"pool use above {thresholds.warning_usage:.0%}: {percent}")
    if snapshot.ceiling and snapshot.available == 0:
        verdict.raise_to(CRITICAL, "no connection available: the next checkout will wait")
    if snapshot.overflow > 0:
        if (
            overflow_seconds is not None
            and overflow_seconds >= thresholds.overflow_critical_seconds
        ):
            verdict.raise_to(
                CRITICAL,
                f"overflow in use continuously for {overflow_seconds:.0f}s: "
                f"{snapshot.overflow} connection(s) beyond pool_size",
            )
        else:
            verdict.raise_to(
                WARNING, f"overflow in use: {snapshot.overflow} connection(s) beyond pool_size"
            )
    return verdict


def judge_health(
    pool: Judgement,
    *,
    cleanup_errors: int,
    timeouts: int,
    ceiling: int,
    max_connections: int | None,
    window_seconds: float,
    processes: int = 1,
) -> Judgement:
    """Add the error counters and the server's limit to the pool's verdict.
    ``processes``: how many server processes with this pool share the server."""
    verdict = Judgement(pool.status, list(pool.warnings))
    window = f"in the last {window_seconds:.0f}s"
    if cleanup_errors:
        verdict.raise_to(WARNING, f"{cleanup_errors} session clean-up error(s) {window}")
    if timeouts:
        verdict.raise_to(CRITICAL, f"{timeouts} connection time-out(s) {window}")
    if max_connections is not None and ceiling >= max_connections:
        verdict.raise_to(
            WARNING,
            f"this process alone may open {ceiling} connections; "
            f"the server allows {max_connections}",
        )
    elif max_connections is not None and processes * ceiling > max_connections:
        verdict.raise_to(
            WARNING,
            f"{processes} processes x {ceiling} connections = {processes * ceiling} "
            f"exceed the server's max_connections={max_connections}",
        )
    return verdict


def processes_to_exceed(ceiling: int, max_connections: int) -> int:
    """How many processes with this ceiling can exceed the server's limit."""
    return max_connections // ceiling + 1 if ceiling else 0


class _EventWindow:
    """Thread-safe count of events in the last ``window`` seconds."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._events: deque[float] = deque()
        self._total = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._events.append(self._clock())
            self._total += 1

    def recent(self) -> int:
        with self._lock:
            horizon = self._clock() - self._window
            while self._events and self._events[0] < horizon:
                self._events.popleft()
            return len(self._events)

    @property
    def total(self) -> int:
        return self._total


class DBConnectionMonitor:
    """Pool statistics and their judgement for one application."""

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        *,
        window_seconds: float = 900.0,
        processes: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self.processes = processes
        self.window_seconds = window_seconds
        self._clock = clock
        self.cleanup_errors = _EventWindow(window_seconds, clock)
        self.timeouts = _EventWindow(window_seconds, clock)
        self._overflow_since: float | None = None
        self._max_connections: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DBConnectionMonitor:
        return cls(
            Thresholds(
                warning_usage=config["POOL_WARNING_USAGE"],
                critical_usage=config["POOL_CRITICAL_USAGE"],
                overflow_critical_seconds=config["POOL_OVERFLOW_CRITICAL_SECONDS"],
            ),
            window_seconds=config["POOL_ALARM_WINDOW_SECONDS"],
            processes=config["SERVER_PROCESSES"],
        )

    def record_cleanup_error(self) -> None:
        self.cleanup_errors.add()

    def record_timeout(self) -> None:
        self.timeouts.add()

    def snapshot(self, engine: Engine | None = None) -> PoolSnapshot:
        pool = (engine or db.engine).pool
        size = _call(pool, "size")
        # QueuePool counts overflow from -pool_size upwards; only the positive
        # part is connections beyond pool_size.
        return PoolSnapshot(
            pool_size=size,
            # No public accessor exists for max_overflow.
            max_overflow=max(int(getattr(pool, "_max_overflow", 0)), 0),
            checked_out=_call(pool, "checkedout"),
            checked_in=_call(pool, "checkedin"),
            overflow=max(_call(pool, "overflow"), 0),
        )

    def _overflow_seconds(self, snapshot: PoolSnapshot) -> float | None:
        # Sampled at every check: "continuously" means every check since the
        # first one that saw overflow in use has seen it too.
        with self._lock:
            now = self._clock()
            if snapshot.overflow <= 0:
                self._overflow_since = None
                return None
            if self._overflow_since is None:
                self._overflow_since = now
            return now - self._overflow_since

    def _judged_pool(self) -> tuple[dict[str, Any], Judgement, PoolSnapshot]:
        snapshot = self.snapshot()
        verdict = judge_pool(
            snapshot, self.thresholds, overflow_seconds=self._overflow_seconds(snapshot)
        )
        pool = {
            "pool_size": snapshot.pool_size,
            "checked_out": snapshot.checked_out,
            "checked_in": snapshot.checked_in,
            "overflow": snapshot.overflow,
            "available": snapshot.available,
            "status": verdict.status,
        }
        return pool, verdict, snapshot

    def get_pool_status(self) -> dict[str, Any]:
        """The seed's ``pool`` object: statistics and their status."""
        return self._judged_pool()[0]

    def server_max_connections(self) -> int | None:
        """The server's max_connections, queried once and cached."""
        if self._max_connections is None:
            try:
                with db.engine.connect() as connection:
                    value = connection.execute(text("SELECT @@max_connections")).scalar()
            except SQLAlchemyError as error:
                logger.warning("could not read max_connections: %s", error)
                return None
            self._max_connections = int(value) if value is not None else None
        return self._max_connections

    def check_pool_health(self) -> dict[str, Any]:
        """The full ``/db-pool-status`` document."""
        pool, verdict, snapshot = self._judged_pool()
        max_connections = self.server_max_connections()
        overall = judge_health(
            verdict,
            cleanup_errors=self.cleanup_errors.recent(),
            timeouts=self.timeouts.recent(),
            ceiling=snapshot.ceiling,
            max_connections=max_connections,
            window_seconds=self.window_seconds,
            processes=self.processes,
        )
        capacity: dict[str, Any] = {
            "max_overflow": snapshot.max_overflow,
            "process_ceiling": snapshot.ceiling,
            "server_max_connections": max_connections,
            "configured_processes": self.processes,
            "deployment_ceiling": self.processes * snapshot.ceiling,
        }
        if max_connections is not None and snapshot.ceiling:
            count = processes_to_exceed(snapshot.ceiling, max_connections)
            capacity["processes_to_exceed_server"] = count
            capacity["note"] = (
                f"{count} processes with this pool ({snapshot.ceiling} connections each) "
                f"can exceed max_connections={max_connections}"
            )
        engine = db.engine
        return {
            "status": overall.status,
            "timestamp": utcnow().isoformat(timespec="seconds"),
            "pool": pool,
            "warnings": overall.warnings,
            "details": {
                "engine": {"driver": engine.driver, "pool_class": type(engine.pool).__name__},
                # Which of several processes answered (host:pid:app).
                "process": instance_id(),
                "capacity": capacity,
                "errors": {
                    "cleanup_errors_total": self.cleanup_errors.total,
                    "timeouts_total": self.timeouts.total,
                },
            },
        }

    def log_pool_status(self) -> dict[str, Any]:
        report = self.check_pool_health()
        pool = report["pool"]
        level = {HEALTHY: logging.INFO, WARNING: logging.WARNING}.get(
            report["status"], logging.ERROR
        )
        logger.log(
            level,
            "db pool %s: size=%d checked_out=%d checked_in=%d overflow=%d available=%d%s",
            report["status"],
            pool["pool_size"],
            pool["checked_out"],
            pool["checked_in"],
            pool["overflow"],
            pool["available"],
            "".join(f"; {warning}" for warning in report["warnings"]),
        )
        return report


def _call(pool: object, name: str) -> int:
    # NullPool and StaticPool have no counters; report zeros rather than fail.
    method = getattr(pool, name, None)
    return int(method()) if callable(method) else 0


def get_monitor(app: Flask | None = None) -> DBConnectionMonitor:
    target = app if app is not None else current_app
    monitor: DBConnectionMonitor = target.extensions["reference_app.db_monitor"]
    return monitor
