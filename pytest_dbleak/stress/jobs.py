"""The jobs runner: plain callables (scheduled jobs, CLI commands) many times from a thread pool."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from pytest_dbleak.stress._common import StressResult, require_positive

_log = logging.getLogger(__name__)


class JobRunner:
    """Call jobs many times from a thread pool, as a threaded job scheduler would.

    Each callable passed to :meth:`run` is called ``runs`` times by a
    :class:`concurrent.futures.ThreadPoolExecutor` with ``threads`` workers
    (what APScheduler's ``ThreadPoolExecutor`` executor uses), so calls of the
    same and of different callables overlap.

    Args:
        runs: How many times each callable is called.
        threads: Number of worker threads.
    """

    def __init__(self, runs: int = 100, threads: int = 4) -> None:
        require_positive(runs=runs, threads=threads)
        self.runs = runs
        self.threads = threads

    def run(self, *callables: Callable[[], object]) -> StressResult:
        """Call each callable ``runs`` times and wait for every call to finish.

        Calls are submitted round-robin (``a, b, a, b, ...``) so different
        jobs interleave.  All calls run even when some fail; then the
        exception raised first (in time) is re-raised -- the original object,
        with its traceback, ``__cause__`` and ``__context__``.

        Returns:
            A :class:`StressResult` with ``kind="jobs"`` and
            ``runs == len(callables) * runs``.
        """
        if not callables:
            raise ValueError("JobRunner.run() needs at least one callable")
        for job in callables:
            if not callable(job):
                raise TypeError(f"JobRunner.run() arguments must be callable, got {job!r}")

        first_error: list[BaseException] = []
        lock = threading.Lock()

        def call(job: Callable[[], object]) -> None:
            try:
                job()
            except BaseException as exc:
                # Futures complete in no useful order; record which failure came first.
                with lock:
                    if not first_error:
                        first_error.append(exc)
                raise

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="dbleak-job"
        ) as pool:
            futures = [pool.submit(call, job) for _ in range(self.runs) for job in callables]
            concurrent.futures.wait(futures)
        # Leaving the with block shut the pool down and joined its threads.
        seconds = time.perf_counter() - started
        total = len(futures)
        del futures  # the failed futures hold the exceptions and, through them, their frames

        if first_error:
            error = first_error.pop()
            try:
                raise error
            finally:
                # Do not keep the failing frames (and whatever they hold) alive from here.
                del error
        _log.debug("JobRunner: %d calls on %d threads in %.3fs", total, self.threads, seconds)
        return StressResult(kind="jobs", runs=total, seconds=seconds, concurrency=self.threads)
