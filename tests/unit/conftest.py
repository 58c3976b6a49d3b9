"""Fixtures of the in-process tracker and detector tests (doubles.py: the server side)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_dbleak.engine.detector import Detector
from pytest_dbleak.engine.tracking import Tracker
from tests.unit.doubles import APP_USER, ROOT, SnapshotServer


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    """A real Tracker, installed for the test only (beside the session's, if any)."""
    t = Tracker()
    t.install()
    yield t
    t.uninstall()


@pytest.fixture
def server() -> SnapshotServer:
    return SnapshotServer()


@pytest.fixture
def detector(tracker: Tracker, server: SnapshotServer) -> Detector:
    return Detector(tracker, server, frozenset({APP_USER}), ROOT)
