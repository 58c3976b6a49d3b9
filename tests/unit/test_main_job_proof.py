"""The main job's closing statement: how it reads the children's verdicts and lays out
its table (reference_app/tests/leaks/proof.py; the children themselves are real runs,
seen in `pytest --dbleak reference_app/tests/leaks`)."""

from __future__ import annotations

import pytest

from reference_app.tests.leaks import proof


@pytest.mark.parametrize(
    ("line", "kinds", "runs", "site"),
    [
        (
            "dbleak: 60 connections leaked over 1000 runs (1 in 17) (60 checked_out) at "
            "reference_app/blueprints/locations.py:18",
            "60 checked_out",
            "1000",
            "reference_app/blueprints/locations.py:18",
        ),
        (
            "E   dbleak: 1 connection leaked (1 checked_out) at reference_app/regressions.py:155",
            "1 checked_out",
            None,
            "reference_app/regressions.py:155",
        ),
        (  # a statement stuck behind the leaked transaction, interrupted by the lock watch
            "dbleak: 0 connections leaked over 50 runs (lock_wait) at "
            "reference_app/services/notifications.py:218",
            "lock_wait",
            "50",
            "reference_app/services/notifications.py:218",
        ),
        (
            "dbleak: 3 connections leaked, 1 allowed (2 checked_out, 1 server_connection)",
            "2 checked_out, 1 server_connection",
            None,
            None,
        ),
    ],
)
def test_a_childs_headline_gives_kinds_runs_and_site(line, kinds, runs, site) -> None:
    found = proof._HEADLINE.search(line)
    assert found is not None
    assert (found["kinds"], found["runs"], found["site"]) == (kinds, runs, site)


def test_every_seed_bug_has_a_catching_test_of_this_suite() -> None:
    assert set(proof.CATCHERS) == {
        "no_request_cleanup",
        "job_without_app_context",
        "job_create_app_per_run",
        "disconnect_thread_without_cleanup",
        "long_running_job_session",
    }
    for test in proof.CATCHERS.values():
        module, name = test.split("::")
        assert f"def {name}(" in (proof.HERE / module).read_text()


def test_the_table_lines_up_its_columns() -> None:
    lines = proof._table(
        ("bug", "leaked"), [("no_request_cleanup", "60 checked_out"), ("x", "1 checked_out")]
    )
    assert lines == [
        "  bug                 leaked",
        "  no_request_cleanup  60 checked_out",
        "  x                   1 checked_out",
    ]


def test_only_this_folder_whole_is_the_main_job(pytester: pytest.Pytester) -> None:
    main = pytester.parseconfig(str(proof.HERE))
    assert proof.is_main_job(main, [object()])  # type: ignore[list-item]
    assert not proof.is_main_job(main, [])
    selected = pytester.parseconfig(str(proof.HERE), "-k", "http")
    assert not proof.is_main_job(selected, [object()])  # type: ignore[list-item]
    one_file = pytester.parseconfig(str(proof.HERE / "test_http_load.py"))
    assert not proof.is_main_job(one_file, [object()])  # type: ignore[list-item]


def test_the_bugs_are_switched_on_only_after_a_clean_run() -> None:
    server = "process backend, server 10.11.19-MariaDB"
    assert proof.statement([], 2, 6, 17, server, width=200) == [
        "The suite leaks on process backend, server 10.11.19-MariaDB (2 of 17 checked tests): "
        "the seed's bugs were not switched on."
    ]
    assert proof.statement([], 0, 1, 17, server, width=200) == [
        "No leaks in 17 checked tests on process backend, server 10.11.19-MariaDB, but the run "
        "failed (exit status 1): the seed's bugs were not switched on."
    ]
    narrow = proof.statement([], 2, 6, 17, server, width=80)
    assert len(narrow) == 2
    assert all(len(line) <= 80 for line in narrow)


ROWS = [
    (
        "no_request_cleanup",
        "dbleak_http_load",
        "60 checked_out over 1000 runs",
        "reference_app/blueprints/locations.py:18",
        "test_http_load.py::test_the_seeds_load_on_locations_two_rounds",
    ),
]
HEAD = ("bug", "marker", "leaked", "site", "caught by")


@pytest.mark.parametrize("width", [80, 100, 120])
def test_a_table_wider_than_the_terminal_becomes_labelled_blocks_within_its_width(
    width: int,
) -> None:
    lines = proof.fitted_table(HEAD, ROWS, width)
    assert all(len(line) <= width for line in lines), lines
    assert lines[0] == "  no_request_cleanup"
    assert "    leaked     60 checked_out over 1000 runs" in lines


def test_a_table_that_fits_stays_a_table() -> None:
    assert proof.fitted_table(HEAD, ROWS, 400) == proof._table(HEAD, ROWS)


def test_a_site_in_the_test_support_reads_injected_at() -> None:
    assert proof._site("reference_app/tests/regressions.py:157") == (
        "injected at reference_app/tests/regressions.py:157"
    )
    assert proof._site("reference_app/blueprints/locations.py:18") == (
        "reference_app/blueprints/locations.py:18"
    )
    assert proof._site("") == ""
