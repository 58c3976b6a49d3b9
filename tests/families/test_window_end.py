"""The window's end: one call takes everything the verdict needs and returns one frozen
result (``Detector.close`` / ``finish``).

In process, against a real ``mariadbd`` it starts, with real PyMySQL connections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbleak.engine.detector import Detector
from pytest_dbleak.engine.reclaim import Reclaim
from pytest_dbleak.engine.results import LOCK_WAIT, SERVER_CONNECTION, CheckResult, Leak
from pytest_dbleak.engine.tracking import Tracker
from pytest_dbleak.families.base import RunningServer
from pytest_dbleak.families.mysql.monitor import Monitor
from tests.families.servers import started_mariadb


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with started_mariadb() as running:
        yield running


@pytest.fixture
def detector(server: RunningServer) -> Iterator[Detector]:
    monitor = Monitor(server.endpoint, server.where)
    try:
        yield Detector(Tracker(), monitor, None, Path.cwd())
    finally:
        monitor.close()


def test_the_window_end_takes_every_input_and_returns_one_frozen_result(
    server: RunningServer, detector: Detector
) -> None:
    window = detector.start()
    leaked = server.endpoint.connect()  # a real connection the "test" leaves open
    stuck = Leak(LOCK_WAIT, 0, "UPDATE t stuck behind a transaction left open")
    asked: list[CheckResult] = []
    try:
        closed = detector.close(
            window,
            "t.py::test_x",
            allow=0,
            settle=0,
            stuck=[stuck],
            stress=("dbleak_jobs", 40),
            known=lambda draft: asked.append(draft) or True,
            report_only=True,
        )
        ident = leaked.thread_id()
    finally:
        leaked.close()
    result = closed.result
    assert [x.kind for x in result.leaks] == [SERVER_CONNECTION, LOCK_WAIT]
    assert result.leaks[0].connection_ids == [ident]
    assert (result.stress, result.runs) == ("dbleak_jobs", 40)
    assert result.known
    assert result.report_only
    assert not result.failed
    # The baseline was asked about the whole result: the stuck statement included.
    assert [x.kind for x in asked[0].leaks] == [SERVER_CONNECTION, LOCK_WAIT]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.known = False  # type: ignore[misc]
    # What reclaim needs comes with the result, not from the detector's leftovers.
    assert isinstance(closed.reclaim, Reclaim)
    assert closed.reclaim.server_ids == (ident,)
    assert closed.late == ()


def test_finish_returns_the_result_and_a_later_window_starts_clean(
    server: RunningServer, detector: Detector
) -> None:
    window = detector.start()
    leaked = server.endpoint.connect()
    try:
        first = detector.finish(window, "t.py::test_leaks", allow=0, settle=0)
    finally:
        leaked.close()
    assert first.failed
    assert first.leaked == 1
    # Nothing of the first verdict is carried into the next: known only when told.
    window = detector.start()
    second = detector.finish(window, "t.py::test_clean", allow=0, settle=1, known=None)
    assert second.leaks == ()
    assert not second.failed
    assert first.leaked == 1  # the first result was not touched
