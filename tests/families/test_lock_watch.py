"""The lock watch against a real ``mariadbd``: a statement stuck behind a transaction
that an ended test left open is freed, and the watch has said so before it is freed.

In process, with real PyMySQL connections and the watch's own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbleak.engine.lockwatch import LockWatch, Resolution
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.families.base import RunningServer
from pytest_dbleak.families.mysql.monitor import Monitor
from tests.families.servers import started_mariadb

BOUND = 0.5  # the lock-wait bound: the watch acts after a wait this long


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with started_mariadb() as running:
        yield running


class Witness(Monitor):
    """The real monitor; it notes what the watch had recorded when it ended a holder."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.watch: LockWatch | None = None
        self.recorded_at_kill: list[list[Resolution]] = []

    def end_connection(self, ident: int) -> None:
        assert self.watch is not None
        self.recorded_at_kill.append(list(self.watch.resolutions))
        super().end_connection(ident)


def test_the_holder_s_resolution_is_recorded_before_the_blocked_statement_goes_on(
    server: RunningServer,
) -> None:
    setup = server.endpoint.connect()
    holder = server.endpoint.connect()
    waiter = server.endpoint.connect()
    monitor = Witness(server.endpoint, server.where)
    watch = LockWatch(monitor, None, Tracker(), Path.cwd(), BOUND)
    monitor.watch = watch
    try:
        with setup.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS test")
            cur.execute("CREATE TABLE IF NOT EXISTS test.item (id INT PRIMARY KEY)")
        with holder.cursor() as cur:  # a transaction a test left open: it read the table
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM test.item")
        holder_id = holder.thread_id()
        watch.reported([holder_id], "t.py::test_leaks")  # that test's leak was reported

        seen: list[list[Resolution]] = []

        def drop() -> None:  # a wider fixture's teardown: waits on the metadata lock
            with waiter.cursor() as cur:
                cur.execute("DROP TABLE test.item")
            # It goes on the moment the holder is gone: what the run can know by then.
            seen.append(list(watch.resolutions))

        dropping = threading.Thread(target=drop)
        dropping.start()
        dropping.join(timeout=30)
        assert not dropping.is_alive(), "DROP TABLE still waits behind the holder"
        assert [r.culprit for r in seen[0]] == ["t.py::test_leaks"]
        assert seen[0][0].line.startswith(f"ended server connection {holder_id} left in ")
        assert "it blocked DROP TABLE test.item" in seen[0][0].line
        assert [[r.culprit for r in at] for at in monitor.recorded_at_kill] == [
            ["t.py::test_leaks"]
        ]
    finally:
        watch.close()
        for conn in (setup, holder, waiter):
            conn.close()
