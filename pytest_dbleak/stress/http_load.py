"""The HTTP load runner: many concurrent requests to a WSGI app, like ``ab -n N -c C``."""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_dbleak.stress._common import HttpLoadResult, LatencyMs, require_positive
from pytest_dbleak.stress.wsgi import serve_wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_log = logging.getLogger(__name__)


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = math.ceil(percent / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


class HttpLoadRunner:
    """Send many concurrent HTTP requests to a WSGI app, like ``ab -n N -c C``.

    The app is served by :func:`serve_wsgi`.  ``concurrency`` client threads
    (``http.client``) take requests from a shared counter until ``requests``
    have been sent.  Every request uses a new connection, like ``ab``
    without ``-k``: Werkzeug's server answers every response with
    ``Connection: close``, so keep-alive is not available.

    Args:
        requests: Total number of requests.
        concurrency: Number of requests in flight at once.
        timeout: Socket timeout, in seconds, of each request.
        join_timeout: Seconds the server may take, after the last response,
            to finish its request threads.
    """

    _MAX_FAILURE_SAMPLES = 5

    def __init__(
        self,
        requests: int = 1000,
        concurrency: int = 50,
        *,
        timeout: float = 30.0,
        join_timeout: float = 10.0,
    ) -> None:
        require_positive(
            requests=requests, concurrency=concurrency, timeout=timeout, join_timeout=join_timeout
        )
        self.requests = requests
        self.concurrency = concurrency
        self.timeout = timeout
        self.join_timeout = join_timeout

    def run(
        self,
        app: WSGIApplication,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
    ) -> HttpLoadResult:
        """Send the requests and wait for every server request thread to finish.

        Request threads are joined before this returns, so teardown handlers
        have run for every request.  Status codes of all kinds (404, 500, ...)
        are counted, not raised; requests that got no response count as
        ``failures``.

        Raises:
            StressError: If server request threads are still running
                ``join_timeout`` seconds after the last response.
        """
        payload = body.encode() if isinstance(body, str) else body
        request_headers = dict(headers or {})
        indices = iter(range(self.requests))
        indices_lock = threading.Lock()

        def next_request() -> bool:
            with indices_lock:
                return next(indices, None) is not None

        def client(host: str, port: int) -> list[tuple[int | None, float, str]]:
            # (status or None, latency in ms, failure message)
            outcomes: list[tuple[int | None, float, str]] = []
            while next_request():
                started = time.perf_counter()
                connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
                try:
                    connection.request(method, path, body=payload, headers=request_headers)
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcomes.append((None, 0.0, f"{type(exc).__name__}: {exc}"))
                else:
                    elapsed = (time.perf_counter() - started) * 1000
                    outcomes.append((response.status, elapsed, ""))
                finally:
                    connection.close()
            return outcomes

        with serve_wsgi(app, join_timeout=self.join_timeout) as (host, port):
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="dbleak-http"
            ) as pool:
                futures = [pool.submit(client, host, port) for _ in range(self.concurrency)]
            seconds = time.perf_counter() - started
            outcomes = [outcome for future in futures for outcome in future.result()]
        # Leaving serve_wsgi joined every request thread.

        statuses = Counter(status for status, _, _ in outcomes if status is not None)
        latencies = sorted(latency for status, latency, _ in outcomes if status is not None)
        failure_messages = [message for status, _, message in outcomes if status is None]
        answered = len(latencies)
        result = HttpLoadResult(
            kind="http",
            runs=len(outcomes),
            seconds=seconds,
            concurrency=self.concurrency,
            statuses=dict(sorted(statuses.items())),
            failures=len(failure_messages),
            requests_per_second=answered / seconds if seconds > 0 else 0.0,
            latency_ms=LatencyMs(
                p50=_percentile(latencies, 50),
                p90=_percentile(latencies, 90),
                p99=_percentile(latencies, 99),
                max=latencies[-1],
            )
            if latencies
            else None,
            failure_samples=tuple(dict.fromkeys(failure_messages))[: self._MAX_FAILURE_SAMPLES],
        )
        _log.debug(
            "HttpLoadRunner: %d requests (c=%d) in %.3fs: %s, %d failures",
            result.runs,
            self.concurrency,
            seconds,
            result.statuses,
            result.failures,
        )
        return result
