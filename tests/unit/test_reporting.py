"""How a check result reads: headline, failure text, dbleak section, summary, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_dbleak.engine.errors import Redactor
from pytest_dbleak.engine.results import CheckResult, Counts, Leak, Site
from pytest_dbleak.reports import reporting

ROW = {
    "id": 42,
    "user": "dbleak_main_abc",
    "host": "127.0.0.1:5555",
    "db": "dbleak_main_abc",
    "command": "Sleep",
    "time": 3,
    "state": None,
    "info": None,
    "trx_started": "2026-01-01 10:00:00",
}


def checked_out(**overrides) -> Leak:
    values = dict(
        kind="checked_out",
        count=1,
        what="server connection 42 of QueuePool checked out",
        site=Site("tests/test_orders.py", 16, "open_order"),
        stack=[
            Site("tests/test_orders.py", 22, "test_checkout"),
            Site("tests/test_orders.py", 16, "open_order"),
        ],
        thread="MainThread",
        connection_ids=[42],
        processlist=[dict(ROW)],
    )
    values.update(overrides)
    return Leak(**values)


def raw_connection() -> Leak:
    return Leak(
        "server_connection",
        1,
        "server connection 43 (u@h, Sleep) opened during the "
        "test and still open; no pool of this process owns it",
        connection_ids=[43],
        processlist=[dict(ROW, id=43, trx_started=None)],
    )


def result(*leaks: Leak, **overrides) -> CheckResult:
    values = dict(
        nodeid="tests/test_orders.py::test_checkout",
        leaks=list(leaks),
        before=Counts(1, 2, 0),
        after=Counts(2, 3, 1),
        waited=1.0,
    )
    values.update(overrides)
    return CheckResult(**values)


@pytest.mark.parametrize(("n", "text"), [(0, "0 tests"), (1, "1 test"), (2, "2 tests")])
def test_plural_counts_things(n: int, text: str) -> None:
    assert reporting.plural(n, "test") == text


def test_the_headline_says_how_many_of_which_kind_and_where() -> None:
    assert reporting.headline(result(checked_out())) == (
        "dbleak: 1 connection leaked (1 checked_out) at tests/test_orders.py:16"
    )


def test_the_headline_adds_up_kinds_in_report_order_and_names_the_allowance() -> None:
    r = result(raw_connection(), checked_out(count=2), raw_connection(), allowed=1)
    assert reporting.headline(r) == (
        "dbleak: 4 connections leaked, 1 allowed (2 checked_out, 2 server_connection)"
        " at tests/test_orders.py:16"
    )


def test_the_headline_names_a_site_whenever_one_leak_has_one() -> None:
    r = result(checked_out(site=None, stack=[]), checked_out(kind="undisposed_engine"))
    assert reporting.headline(r).endswith(" at tests/test_orders.py:16")


def test_a_stressed_test_states_the_rate() -> None:
    r = result(checked_out(count=4), runs=100)
    assert reporting.rate(r) == "4 connections leaked over 100 runs (1 in 25)"
    assert reporting.rate(result(runs=100)) == "0 connections leaked over 100 runs"
    assert reporting.rate(result(checked_out(count=300), runs=100)).endswith("(1 in 1)")


def test_the_failure_text_lists_each_leak_with_its_user_stack_outermost_first() -> None:
    text = reporting.failure_text(result(checked_out(), raw_connection()))
    assert text.splitlines() == [
        "dbleak: 2 connections leaked (1 checked_out, 1 server_connection) at "
        "tests/test_orders.py:16",
        "",
        "checked-out connection never returned: server connection 42 of QueuePool checked out",
        "    tests/test_orders.py:22 in test_checkout",
        "    tests/test_orders.py:16 in open_order",
        "",
        "server connection left open: server connection 43 (u@h, Sleep) opened during the "
        "test and still open; no pool of this process owns it",
    ]


def test_the_failure_text_names_a_worker_thread_and_a_missing_user_stack() -> None:
    text = reporting.failure_text(
        result(checked_out(thread="worker-1", stack=[], site=None, count=2, occurrences=2))
    )
    assert f"2 {reporting.TIMES} checked-out connection never returned: " in text
    assert "    in thread worker-1\n    (no user code on the stack)\n" in text


def test_the_section_has_the_counters_the_wait_and_the_processlist_table() -> None:
    lines = reporting.section_text(result(checked_out(), raw_connection())).splitlines()
    assert lines[:4] == [
        "server connections of the session: 1 before, 2 after",
        "Threads_connected: 2 before, 3 after",
        "checked-out pooled connections: 0 before, 1 after",
        "re-checked for 1.00 s before declaring the leak",
    ]
    assert lines[5] == "processlist rows left behind:"
    header, first, second = lines[6:]
    assert header.split() == ["id", "user", "host", "db", "command", "time", "state", "trx_started"]
    assert first.split() == [
        "42",
        "dbleak_main_abc",
        "127.0.0.1:5555",
        "dbleak_main_abc",
        "Sleep",
        "3",
        "2026-01-01",
        "10:00:00",
    ]
    assert second.split()[:1] == ["43"]
    # Columns line up.
    assert header.index("command") == first.index("Sleep") == second.index("Sleep")


def test_the_section_of_a_test_that_did_not_wait_says_nothing_about_waiting() -> None:
    text = reporting.section_text(result(waited=0.0))
    assert "re-checked" not in text
    assert "processlist" not in text


def test_the_summary_lists_only_tests_that_leaked_and_why_they_did_not_fail() -> None:
    results = [
        result(checked_out()),
        result(nodeid="t.py::test_clean"),
        result(raw_connection(), nodeid="t.py::test_allowed", allowed=1),
        result(checked_out(), nodeid="t.py::test_known", known=True),
        result(checked_out(), nodeid="t.py::test_report_only", report_only=True),
    ]
    assert reporting.summary_lines(results) == [
        "tests/test_orders.py::test_checkout: 1 connection leaked (1 checked_out) at "
        "tests/test_orders.py:16",
        "t.py::test_allowed: 1 connection leaked (1 server_connection) [within allow=1]",
        "t.py::test_known: 1 connection leaked (1 checked_out) at tests/test_orders.py:16 "
        "[known: in the baseline]",
        "t.py::test_report_only: 1 connection leaked (1 checked_out) at "
        "tests/test_orders.py:16 [reported only]",
    ]


def test_the_json_report_has_every_result_its_outcome_and_a_summary(tmp_path: Path) -> None:
    results = [result(checked_out()), result(nodeid="t.py::test_clean", waited=0.0)]
    target = tmp_path / "deep" / "dir" / "report.json"
    reporting.write_json(
        target, results, {"t.py::test_clean": "passed"}, {"tool": "pytest-dbleak"}, Redactor()
    )
    document = json.loads(target.read_text())
    assert document["version"] == reporting.REPORT_VERSION
    assert document["tool"] == "pytest-dbleak"
    assert document["summary"] == {
        "tests": 2,
        "leaking_tests": 1,
        "failed_tests": 1,
        "other_failed_tests": 0,
        "leaked_connections": 1,
    }
    leaky, clean = document["tests"]
    assert (leaky["leak_failed"], clean["leak_failed"]) == (True, False)
    assert leaky["outcome"] == "unknown"
    assert clean["outcome"] == "passed"
    assert (leaky["leaked"], leaky["failed"], leaky["waited"]) == (1, True, 1.0)
    assert leaky["leaks"][0]["site"] == {
        "file": "tests/test_orders.py",
        "line": 16,
        "function": "open_order",
    }
    assert leaky["before"] == {"server_connections": 1, "threads_connected": 2, "checked_out": 0}
    assert (clean["leaks"], clean["leaked"], clean["failed"]) == ([], 0, False)
    assert list(tmp_path.rglob("*.tmp")) == []  # written through a temporary file


def test_the_json_report_is_redacted(tmp_path: Path) -> None:
    redact = Redactor(["s3cr3t-password"])
    leak = checked_out(what="connection to mysql://u:other-pass@h:1 with s3cr3t-password")
    target = tmp_path / "report.json"
    reporting.write_json(target, [result(leak)], {}, {"url": "mysql://admin:adminpw@h/db"}, redact)
    text = target.read_text()
    for secret in ("s3cr3t-password", "other-pass", "adminpw"):
        assert secret not in text
    assert json.loads(text)["url"] == "mysql://admin:***@h/db"


def test_a_result_round_trips_through_its_dict() -> None:
    original = result(checked_out(), raw_connection(), runs=10, stress="dbleak_jobs")
    assert CheckResult.from_dict(json.loads(json.dumps(original.as_dict()))) == original


def identical_checkouts(n: int, first_id: int = 100) -> list[Leak]:
    """n leaks of one stack, as a stressed test that leaks at one line makes them."""
    return [
        checked_out(
            what=f"server connection {i} of QueuePool checked out",
            connection_ids=[i],
            processlist=[dict(ROW, id=i)],
            thread=f"worker-{i % 4}",
        )
        for i in range(first_id, first_id + n)
    ]


def test_leaks_of_one_kind_at_one_stack_are_one_entry_and_nothing_is_lost() -> None:
    r = result(*identical_checkouts(48), raw_connection())
    grouped, raw = r.leaks
    assert (grouped.kind, grouped.count, grouped.occurrences) == ("checked_out", 48, 48)
    assert grouped.what == "server connections of QueuePool checked out"
    assert grouped.connection_ids == list(range(100, 148))
    assert [row["id"] for row in grouped.processlist] == list(range(100, 148))
    assert grouped.thread == "worker-0, worker-1, worker-2, worker-3"
    assert (raw.kind, raw.occurrences) == ("server_connection", 1)
    assert r.leaked == 49
    # The JSON round trip keeps the group as it is.
    assert CheckResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r


def test_leaks_at_different_stacks_or_of_different_kinds_stay_apart() -> None:
    other_stack = checked_out(stack=[Site("tests/test_orders.py", 30, "test_other")])
    r = result(checked_out(), other_stack, checked_out(kind="gc_return"))
    assert [(leak.kind, leak.occurrences) for leak in r.leaks] == [
        ("checked_out", 1),
        ("checked_out", 1),
        ("gc_return", 1),
    ]


def test_raw_connections_from_different_ports_group_into_one_sentence() -> None:
    leaks = [
        Leak(
            "server_connection",
            1,
            f"server connection {i} (u@127.0.0.1:{5000 + i}, "
            "Sleep) opened during the test and still open; no pool of this process "
            "owns it",
            connection_ids=[i],
        )
        for i in (7, 8)
    ]
    [leak] = result(*leaks).leaks
    assert leak.what == (
        "server connections opened during the test and still open; "
        "no pool of this process owns them"
    )


def test_a_grouped_failure_shows_one_stack_and_folds_ids_and_rows() -> None:
    r = result(*identical_checkouts(48))
    text = reporting.failure_text(r).splitlines()
    assert text == [
        "dbleak: 48 connections leaked (48 checked_out) at tests/test_orders.py:16",
        "",
        f"48 {reporting.TIMES} checked-out connection never returned: server connections of "
        "QueuePool checked out",
        "    connection ids: 100, 101, 102, 103, 104 and 43 more",
        "    in threads worker-0, worker-1, worker-2, worker-3",
        "    tests/test_orders.py:22 in test_checkout",
        "    tests/test_orders.py:16 in open_order",
    ]
    section = reporting.section_text(r).splitlines()
    assert section[-1] == "  … and 43 more rows (all in the JSON report)"
    assert len(section) == 3 + 1 + 1 + 2 + 5 + 1  # counters, wait, gap, title+head, rows, fold


def test_one_engine_holding_two_connections_is_one_engine() -> None:
    engine = Leak(
        "undisposed_engine",
        2,
        "QueuePool still alive without dispose(), holding 2 server connections",
        site=Site("t.py", 3, "test_x"),
        stack=[Site("t.py", 3, "test_x")],
        connection_ids=[5, 6],
    )
    text = reporting.failure_text(result(engine))
    assert "\nengine created and never disposed: QueuePool still alive" in text
    assert reporting.TIMES not in text


@pytest.mark.parametrize(
    ("items", "text"),
    [
        ([1], "1"),
        ([1, 2, 3, 4, 5], "1, 2, 3, 4, 5"),
        ([1, 2, 3, 4, 5, 6], "1, 2, 3, 4, 5 and 1 more"),
    ],
)
def test_folded_shows_the_first_few_and_counts_the_rest(items: list[int], text: str) -> None:
    assert reporting.folded(items) == text


def test_the_header_names_backend_server_version_and_address() -> None:
    assert reporting.header_line("process", "127.0.0.1", 40123, "10.11.19-MariaDB") == (
        "dbleak: process backend, server 10.11.19-MariaDB at 127.0.0.1:40123"
    )
    assert reporting.header_line("url", "db.local", None, "8.4.3") == (
        "dbleak: url backend, server 8.4.3 at db.local"
    )


@pytest.mark.parametrize(
    ("handshake", "version"),
    [
        ("5.5.5-10.11.19-MariaDB-0+deb12u1", "10.11.19-MariaDB-0+deb12u1"),
        ("11.4.2-MariaDB", "11.4.2-MariaDB"),
        ("8.4.3", "8.4.3"),
    ],
)
def test_the_server_version_drops_mariadbs_protocol_prefix(handshake: str, version: str) -> None:
    from pytest_dbleak.families.mysql.monitor import server_version

    assert server_version(handshake) == version


def test_only_tests_that_were_not_skipped_count_as_checked() -> None:
    results = [result(nodeid="a"), result(nodeid="b"), result(nodeid="c")]
    outcomes = {"a": "passed", "b": "skipped", "c": "failed"}
    assert [r.nodeid for r in reporting.checked(results, outcomes)] == ["a", "c"]
    assert reporting.clean_line(1) == "dbleak: no leaks in 1 checked test"
    assert reporting.clean_line(452) == "dbleak: no leaks in 452 checked tests"


def test_the_json_summary_counts_only_the_tests_that_failed_because_of_a_leak(
    tmp_path: Path,
) -> None:
    results = [
        result(checked_out(), nodeid="t::own_failure"),
        result(checked_out(), nodeid="t::leak_only"),
    ]
    target = tmp_path / "r.json"
    reporting.write_json(target, results, {}, {}, Redactor(), leak_failed={"t::leak_only"})
    assert json.loads(target.read_text())["summary"]["failed_tests"] == 1


def test_kinds_that_add_no_connection_are_left_out_of_the_counts() -> None:
    engine = checked_out(
        kind="undisposed_engine",
        count=0,
        what="QueuePool still alive without dispose(), holding 1 server "
        "connection (already counted as gc_return)",
        stack=[Site("t.py", 1, "test_x")],
    )
    r = result(checked_out(kind="gc_return"), engine)
    assert reporting.headline(r) == (
        "dbleak: 1 connection leaked (1 gc_return) at tests/test_orders.py:16"
    )


def test_a_statement_stuck_behind_a_lock_without_a_leaked_connection_says_so() -> None:
    from pytest_dbleak.engine.results import LOCK_WAIT, CheckResult, Leak

    stuck = Leak(LOCK_WAIT, 0, "statement on server connection 8 waited 5 s")
    result = CheckResult("t.py::test_x", [stuck], runs=50)
    assert reporting.headline(result) == (
        "dbleak: 1 statement stuck behind a lock over 50 runs (lock_wait)"
    )
