"""The MySQL family's admin monitor against a real ``mariadbd`` it starts.

In process, with a real server and real PyMySQL connections.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbleak.engine.errors import DbleakError, ServerGoneError
from pytest_dbleak.families._process import (
    ReadyNotice,
    alive,
    free_port,
    spawn_under_reaper,
    stop_reaper,
)
from pytest_dbleak.families.base import RunningServer
from pytest_dbleak.families.mysql.embedded import (
    ensure_template,
    find_mysqld,
    server_command,
    server_root,
)
from pytest_dbleak.families.mysql.monitor import Monitor
from tests.families.servers import CACHE, started_mariadb


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with started_mariadb() as running:
        yield running


def test_a_monitor_whose_connection_was_killed_opens_a_new_one_and_still_answers(
    server: RunningServer,
) -> None:
    monitor = Monitor(server.endpoint, server.where)
    watch = Monitor(server.endpoint, server.where, monitor.own_ids)
    try:
        first = monitor.connection_id
        watch.query(f"KILL CONNECTION {first}")

        snap = monitor.snapshot()

        assert monitor.connection_id != first
        assert monitor.own_ids == {monitor.connection_id, watch.connection_id}
        assert monitor.connection_id not in snap.rows
        assert watch.connection_id not in snap.rows
    finally:
        monitor.close()
        watch.close()


def test_a_monitor_interrupted_mid_statement_never_reads_that_statements_answer(
    server: RunningServer,
) -> None:
    """A Ctrl-C inside the socket read leaves the answer of the interrupted statement
    on the wire; reusing that connection would hand it to the next query."""
    monitor = Monitor(server.endpoint, server.where)
    watch = Monitor(server.endpoint, server.where, monitor.own_ids)
    main = threading.main_thread().ident
    assert main == threading.get_ident(), "signals reach the main thread only"
    sent = threading.Event()

    def interrupt_once_running() -> None:
        while not sent.is_set():  # the server offers no event: poll its processlist
            rows = watch.query(
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s",
                (monitor.connection_id,),
            )
            if rows and str(rows[0][0] or "").startswith("SELECT SLEEP"):
                signal.pthread_kill(main, signal.SIGINT)
                sent.set()

    poller = threading.Thread(target=interrupt_once_running)
    poller.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            monitor.query("SELECT SLEEP(3), 'stale'")
        poller.join()

        assert monitor.query("SELECT 'fresh'") == [("fresh",)]
    finally:
        sent.set()
        poller.join()
        monitor.close()
        watch.close()


def test_a_monitor_of_a_server_that_stopped_says_so_in_one_line(server: RunningServer) -> None:
    monitor = Monitor(server.endpoint, server.where)
    server.stop()

    with pytest.raises(ServerGoneError, match=r"stopped answering"):
        monitor.snapshot()
    monitor.close()


def test_a_started_mariadbd_says_it_is_ready_through_the_notify_socket(tmp_path: Path) -> None:
    # Debian's mariadbd is built with libsystemd: the start-up is awaited as an event.
    binary = find_mysqld(None)
    if binary is None:
        pytest.skip("no mariadbd or mysqld on PATH")
    template = ensure_template(binary, CACHE)
    root = server_root(template, copy=False)
    notice = ReadyNotice(root)
    reaped = spawn_under_reaper(
        root,
        server_command(binary, root, free_port()),
        notice.env(),
        copy=(template / "data", root / "data"),  # the reaper copies the template
    )
    try:
        assert notice.wait(30)
        assert alive(reaped.pid())
        assert (root / "data" / "mysql").is_dir()
    finally:
        notice.close()
        stop_reaper(reaped.proc)
    assert not root.exists()


def test_a_template_the_reaper_cannot_copy_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "server"
    root.mkdir()
    reaped = spawn_under_reaper(
        root, ["sleep", "60"], copy=(tmp_path / "no-such-template", root / "data")
    )
    with pytest.raises(DbleakError) as caught:
        reaped.pid()
    message = str(caught.value)
    assert message.startswith("the server could not be started: cp: ")
    assert "no-such-template" in message
    assert "\n" not in message
    stop_reaper(reaped.proc)
    assert reaped.proc.returncode == 1
    assert not root.exists()


def test_without_a_word_from_the_server_the_notice_times_out_and_the_probe_decides(
    tmp_path: Path,
) -> None:
    notice = ReadyNotice(tmp_path)
    try:
        assert not notice.wait(0.01)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.sendto(b"STATUS=starting\n", notice.path)
            assert not notice.wait(0.01)
            server.sendto(b"STATUS=Taking your SQL requests now...\nREADY=1\n", notice.path)
        assert notice.wait(5)
    finally:
        notice.close()
