"""Which names the url backend's sweep may drop, and SIGTERM turned into Ctrl-C."""

from __future__ import annotations

import os
import signal

import pytest

from pytest_dbleak.engine.signals import sigterm_as_interrupt
from pytest_dbleak.families.mysql.monitor import _SESSION_NAME


@pytest.mark.parametrize("name", ["dbleak_main_9a1dbd", "dbleak_gw0_000fff", "dbleak_gw12_abcdef"])
def test_the_names_of_sessions_are_swept(name: str) -> None:
    assert _SESSION_NAME.match(name)


@pytest.mark.parametrize(
    "name",
    [
        "dbleak_admin",  # the process backend's administrator
        "dbleak_main_9a1dbd_x",
        "dbleak_main_9A1DBD",
        "dbleak__9a1dbd",
        "dbleak_toolongtag_9a1dbd",
        "dbleakmain_9a1dbd",
        "app_dbleak_main_9a1dbd",
        "dbleak_main_9a1db",
    ],
)
def test_other_names_are_never_swept(name: str) -> None:
    assert not _SESSION_NAME.match(name)


def test_sigterm_interrupts_like_ctrl_c_until_undone() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process
    try:
        undo = sigterm_as_interrupt()
        try:
            with pytest.raises(KeyboardInterrupt):  # the handler runs as os.kill returns
                os.kill(os.getpid(), signal.SIGTERM)
        finally:
            undo()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_handler_someone_else_installed_stays_in_charge() -> None:
    def theirs(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        undo = sigterm_as_interrupt()
        assert signal.getsignal(signal.SIGTERM) is theirs
        undo()
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)
