"""Which test started which thread (threads.py), on real threads."""

from __future__ import annotations

import itertools
import threading

from pytest_dbleak.engine.threads import ThreadStarts


def make() -> tuple[ThreadStarts, list[bool]]:
    counter = itertools.count()
    owned = [False]
    starts = ThreadStarts(lambda: next(counter), lambda: owned[0])
    return starts, owned


def test_a_thread_started_since_a_mark_and_still_running_is_listed_until_it_ends() -> None:
    starts, _ = make()
    starts.install()
    try:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        assert starts.running_since(0) == [thread]
        stop.set()
        thread.join()
        assert starts.running_since(0) == []
    finally:
        starts.uninstall()


def test_a_thread_a_wider_fixture_starts_is_never_a_tests() -> None:
    starts, owned = make()
    starts.install()
    try:
        owned[0] = True
        thread = threading.Timer(10, lambda: None)
        thread.start()
        owned[0] = False
        assert starts.running_since(0) == []
        thread.cancel()
        thread.join()
    finally:
        starts.uninstall()


def test_a_late_threads_work_and_the_threads_it_starts_are_blamed_on_its_test() -> None:
    starts, _ = make()
    starts.install()
    try:
        go = threading.Event()
        seen: list[str | None] = []

        def child() -> None:
            seen.append(starts.blamed())

        def parent() -> None:
            go.wait(10)
            seen.append(starts.blamed())
            inner = threading.Thread(target=child)
            inner.start()
            inner.join()

        thread = threading.Thread(target=parent)
        thread.start()
        starts.blame(starts.running_since(0), "test_a.py::test_one")
        go.set()
        thread.join()
        assert seen == ["test_a.py::test_one", "test_a.py::test_one"]
        assert starts.blamed() is None  # this thread is nobody's late thread
    finally:
        starts.uninstall()


def test_uninstall_restores_threading() -> None:
    original = threading.Thread.start
    starts, _ = make()
    starts.install()
    assert threading.Thread.start is not original
    starts.uninstall()
    assert threading.Thread.start is original
