"""What the stress runners share: their errors, their results and a few thread helpers."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable
from typing import Any

#: Address every runner serves on.
LOOPBACK = "127.0.0.1"


class StressError(RuntimeError):
    """A stress run could not finish cleanly.

    Raised when server threads are still running after their deadline, or
    (as :class:`SocketChurnError`) when a Socket.IO churn fails.
    """


class SocketChurnError(StressError):
    """A Socket.IO churn failed.

    A client could not connect, ``on_connect`` raised, a server-side
    disconnect handler or background task raised, or the server had not
    settled (disconnects handled, tasks ended, threads joined) by the
    deadline.  When the failure has an underlying exception it is chained as
    ``__cause__``.
    """


@dataclasses.dataclass(frozen=True)
class StressResult:
    """What a stress run did.

    Attributes:
        kind: Which runner produced it: ``"jobs"``, ``"socketio"`` or ``"http"``.
        runs: Total operations performed (calls, clients or requests).
        seconds: Wall-clock time of the operations, excluding server start-up
            and the final teardown waits.
        concurrency: How many operations could run at once (threads,
            concurrent clients, concurrent requests).
    """

    kind: str
    runs: int
    seconds: float
    concurrency: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SocketChurnResult(StressResult):
    """Result of :meth:`SocketChurnRunner.run`.

    Attributes:
        disconnects: Server-side disconnect events handled during the run.
        server_tasks: Server background tasks (Socket.IO event handlers, tasks
            the application started, Engine.IO writers) that were awaited,
            not counting Engine.IO's per-connection ping timers.
    """

    disconnects: int
    server_tasks: int


@dataclasses.dataclass(frozen=True)
class LatencyMs:
    """Latency percentiles in milliseconds (nearest-rank method)."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclasses.dataclass(frozen=True)
class HttpLoadResult(StressResult):
    """Result of :meth:`HttpLoadRunner.run`.

    Attributes:
        statuses: HTTP status code -> number of responses with that status.
        failures: Requests that got no HTTP response (connection refused or
            reset, timeout, malformed response).
        requests_per_second: Responses received per second of ``seconds``.
        latency_ms: Percentiles over the requests that got a response, from
            opening the connection to reading the last byte of the body;
            ``None`` when no request got a response.
        failure_samples: The first few distinct failure messages.
    """

    statuses: dict[int, int]
    failures: int
    requests_per_second: float
    latency_ms: LatencyMs | None
    failure_samples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict (status codes become string keys)."""
        data = super().as_dict()
        # JSON object keys are strings; convert here so a JSON round trip is stable.
        data["statuses"] = {str(code): count for code, count in sorted(self.statuses.items())}
        data["failure_samples"] = list(self.failure_samples)
        return data


def require_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def join_all(threads: Iterable[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join ``threads`` until ``deadline`` (``time.monotonic()``); return those still alive."""
    threads = list(threads)
    for thread in threads:
        thread.join(remaining(deadline))
    return [thread for thread in threads if thread.is_alive()]


def names(threads: Iterable[threading.Thread]) -> str:
    return ", ".join(sorted(thread.name for thread in threads))
