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
