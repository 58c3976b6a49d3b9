"""Parsing and formatting of the child-process and server-transaction details."""

from __future__ import annotations

import os
import socket

import pytest

from pytest_dbleak.engine.children import Children, _ppid, owner_pid
from pytest_dbleak.engine.clientsockets import Client, client_of
from pytest_dbleak.families.mysql.monitor import TrxInfo


@pytest.mark.parametrize(
    ("host", "client"),
    [
        ("127.0.0.1:54348", Client("127.0.0.1", 54348)),
        ("[::1]:40000", Client("::1", 40000)),
        ("::1:40000", Client("::1", 40000)),  # PostgreSQL's host(client_addr) || ':' || port
        ("::ffff:127.0.0.1:40000", Client("127.0.0.1", 40000)),
        ("172.17.0.1:57286", Client("172.17.0.1", 57286)),  # behind Docker's port proxy
        ("localhost:40000", Client(None, 40000)),  # a name: the port alone tells
        ("localhost", None),
        ("", None),
        ("db.example:x", None),
    ],
)
def test_the_client_comes_from_the_processlist_host(host: str, client: Client | None) -> None:
    assert client_of(host) == client


def test_the_parent_of_this_process_is_read_from_proc() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here")
    assert _ppid(os.getpid()) == os.getppid()


def test_a_tcp_socket_is_traced_to_the_process_that_holds_it() -> None:
    # A real loopback connection: the listening side plays the server.
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc here")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server_port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", server_port)) as client:
            accepted, _ = server.accept()
            with accepted:
                port = client.getsockname()[1]
                mine = Client("127.0.0.1", port)
                assert owner_pid(mine, server_port, [os.getpid()]) == os.getpid()
                assert owner_pid(mine, server_port + 1, [os.getpid()]) is None
                # The same port from another address is another socket.
                assert owner_pid(Client("172.17.0.1", port), server_port, [os.getpid()]) is None
                assert owner_pid(Client(None, port), server_port, [os.getpid()]) == os.getpid()


def test_a_child_report_round_trips_and_a_torn_line_is_skipped() -> None:
    children = Children()
    children.install(lambda: 7)
    try:
        children.fork_seq = 3
        children.report("connect", 42, (("/app/jobs.py", 12, "run"),))
        assert children.dir is not None
        with open(children.dir / "999.jsonl", "a", encoding="utf-8") as f:
            f.write('{"kind": "connect", "pid": 99')  # a child killed mid-write
        event = children.opened_by_child(42)
        assert event is not None
        assert (event.pid, event.fork_seq, event.stack) == (
            os.getpid(),
            3,
            (("/app/jobs.py", 12, "run"),),
        )
        assert children.opened_by_child(43) is None
    finally:
        children.uninstall()
    assert children.dir is None


def test_an_open_transaction_says_when_it_began_and_what_it_locks() -> None:
    trx = TrxInfo(5, "1234", "2026-12-01 20:31:02", "RUNNING", 1, 1, 1, ("app.accounts",))
    assert trx.describe() == (
        "began 2026-12-01 20:31:02, 1 row lock, 1 table locked, 1 row modified, "
        "metadata locks on app.accounts"
    )
    many = TrxInfo(5, "1234", "2026-12-01 20:31:02", "RUNNING", 3, 2, 0)
    assert many.describe() == "began 2026-12-01 20:31:02, 3 row locks, 2 tables locked"


MARIADB_STATUS = """
------------
TRANSACTIONS
------------
Trx id counter 2284
Purge done for trx's n:o < 2272 undo n:o < 0 state: running
History list length 4
LIST OF TRANSACTIONS FOR EACH SESSION:
---TRANSACTION (0x7ff19f9c2180), ACTIVE 0 sec
0 lock struct(s), heap size 1128, 0 row lock(s)
MariaDB thread id 2371, OS thread handle 140675685242560, query id 34431 127.0.0.1 root
Trx read view will not see trx with id >= 2283, sees < 2283
---TRANSACTION 2283, ACTIVE 12 sec
2 lock struct(s), heap size 1128, 1 row lock(s), undo log entries 1
MariaDB thread id 2370, OS thread handle 140675683399360, query id 34428 127.0.0.1 root
---TRANSACTION (0x7ff19f9c0b80), not started
0 lock struct(s), heap size 1128, 0 row lock(s)
--------
FILE I/O
--------
"""

MYSQL_STATUS = """
LIST OF TRANSACTIONS FOR EACH SESSION:
---TRANSACTION 421604563473624, not started
0 lock struct(s), heap size 1128, 0 row lock(s)
---TRANSACTION 1845, ACTIVE 3 sec
mysql tables in use 1, locked 1
3 lock struct(s), heap size 1128, 2 row lock(s), undo log entries 2
MySQL thread id 9, OS thread handle 139, query id 51 172.17.0.1 root
--------
FILE I/O
"""


def test_started_transactions_are_read_from_the_innodb_status_of_mariadb_and_mysql() -> None:
    from pytest_dbleak.families.mysql.monitor import parse_innodb_transactions

    assert [
        (t.thread_id, t.trx_id, t.started, t.rows_locked, t.rows_modified)
        for t in parse_innodb_transactions(MARIADB_STATUS)
    ] == [
        (2371, "(0x7ff19f9c2180)", "0 s ago", 0, 0),
        (2370, "2283", "12 s ago", 1, 1),
    ]
    assert [
        (t.thread_id, t.trx_id, t.rows_locked, t.rows_modified)
        for t in parse_innodb_transactions(MYSQL_STATUS)
    ] == [(9, "1845", 2, 2)]
    assert parse_innodb_transactions("") == []
