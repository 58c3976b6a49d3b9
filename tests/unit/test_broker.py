"""The xdist controller's server broker, in-process over its real unix socket: what a
worker hears when a start fails (its answers: tests/unit/test_family_choice.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_dbleak.engine.broker import Broker, ask
from pytest_dbleak.engine.errors import DbleakError


def test_a_start_that_fails_is_the_workers_one_line_error() -> None:
    def serve(family: str) -> dict[str, Any]:
        raise DbleakError(f"no {family} server binary found")

    broker = Broker(serve)
    try:
        with pytest.raises(DbleakError, match=r"^no postgresql server binary found$"):
            ask(broker.path, "postgresql", 30)
    finally:
        broker.close()


def test_a_bug_while_starting_reaches_the_worker_at_once_not_after_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def serve(family: str) -> dict[str, Any]:
        raise RuntimeError("no port in the answer\nsecond line")

    broker = Broker(serve)
    try:
        with pytest.raises(DbleakError) as caught:
            ask(broker.path, "mysql", 30)
    finally:
        broker.close()
    assert str(caught.value) == "starting the server failed: RuntimeError: no port in the answer"
    assert "the server broker failed" in caplog.text  # the traceback stays with the controller
