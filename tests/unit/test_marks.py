"""Marker arguments are validated by calling the marker's signature."""

from __future__ import annotations

import pytest

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.pytest_layer import marks
from pytest_dbleak.pytest_layer.marks import LeakMark


def test_dbleak_without_arguments_changes_nothing() -> None:
    assert marks.validate("dbleak", (), {}) == LeakMark(allow=None, settle=None)


def test_dbleak_takes_allow_and_settle() -> None:
    assert marks.validate("dbleak", (), {"allow": 2, "settle": 0.5}) == LeakMark(2, 0.5)
    assert marks.validate("dbleak", (), {"settle": 3}) == LeakMark(None, 3.0)
    assert isinstance(marks.validate("dbleak", (), {"settle": 3}).settle, float)
    assert marks.validate("dbleak", (), {"allow": 0, "settle": 0}) == LeakMark(0, 0.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        pytest.param(
            (),
            {"alow": 1},
            "@pytest.mark.dbleak: got an unexpected keyword argument 'alow'; did you mean 'allow'?",
            id="typo",
        ),
        pytest.param(
            (1,),
            {},
            "@pytest.mark.dbleak: takes 0 positional arguments but 1 was given",
            id="positional",
        ),
        pytest.param(
            (),
            {"allow": -1},
            "@pytest.mark.dbleak: allow must be a whole number >= 0, got -1",
            id="negative_allow",
        ),
        pytest.param(
            (),
            {"allow": 1.5},
            "@pytest.mark.dbleak: allow must be a whole number >= 0, got 1.5",
            id="fractional_allow",
        ),
        pytest.param(
            (),
            {"allow": True},
            "@pytest.mark.dbleak: allow must be a whole number >= 0, got True",
            id="boolean_allow",
        ),
        pytest.param(
            (),
            {"allow": "1"},
            "@pytest.mark.dbleak: allow must be a whole number >= 0, got '1'",
            id="string_allow",
        ),
        pytest.param(
            (),
            {"settle": -0.1},
            "@pytest.mark.dbleak: settle must be a number of seconds >= 0, got -0.1",
            id="negative_settle",
        ),
        pytest.param(
            (),
            {"settle": float("nan")},
            "@pytest.mark.dbleak: settle must be a number of seconds >= 0, got nan",
            id="nan_settle",
        ),
    ],
)
def test_a_mistake_in_the_dbleak_marker_is_one_line_that_names_it(args, kwargs, message) -> None:
    with pytest.raises(DbleakError) as error:
        marks.validate("dbleak", args, kwargs)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_no_dbleak_takes_no_arguments() -> None:
    assert marks.validate("no_dbleak", (), {}) is None
    with pytest.raises(DbleakError, match=r"^@pytest.mark.no_dbleak: got an unexpected keyword"):
        marks.validate("no_dbleak", (), {"reason": "slow"})


@pytest.mark.parametrize("name", sorted(marks.MARKERS))
def test_every_marker_can_be_used_without_arguments_and_refuses_a_typo(name: str) -> None:
    marks.validate(name, (), {})
    with pytest.raises(
        DbleakError,
        match=rf"^@pytest.mark.{name}: got an unexpected keyword "
        r"argument 'typo'$",
    ):
        marks.validate(name, (), {"typo": 1})


def test_every_marker_is_documented_with_its_signature() -> None:
    assert set(marks.MARKERS) == {
        "dbleak",
        "no_dbleak",
        "dbleak_jobs",
        "dbleak_socket_churn",
        "dbleak_http_load",
    }
    assert marks.marker_line("dbleak").startswith("dbleak(allow=None, settle=None): Tune ")
    assert marks.marker_line("no_dbleak") == "no_dbleak(): Skip the leak check for this test."


def test_an_infinite_settle_in_the_marker_is_refused() -> None:
    with pytest.raises(DbleakError, match="settle must be a number of seconds >= 0"):
        marks.validate("dbleak", (), {"settle": float("inf")})


@pytest.mark.parametrize(
    ("marker", "kwargs", "suggestion"),
    [
        ("dbleak", {"setle": 1}, "settle"),
        ("dbleak_jobs", {"thread": 2}, "threads"),
        ("dbleak_socket_churn", {"concurency": 2}, "concurrency"),
        ("dbleak_http_load", {"request": 2}, "requests"),
    ],
)
def test_a_near_miss_keyword_gets_a_suggestion(marker, kwargs, suggestion) -> None:
    with pytest.raises(DbleakError) as error:
        marks.validate(marker, (), kwargs)
    assert str(error.value).endswith(f"; did you mean {suggestion!r}?")


def test_a_keyword_like_none_of_the_marker_gets_no_suggestion() -> None:
    with pytest.raises(DbleakError) as error:
        marks.validate("dbleak", (), {"reason": "x"})
    assert str(error.value) == "@pytest.mark.dbleak: got an unexpected keyword argument 'reason'"


def test_a_marker_name_close_to_one_of_ours_is_named_with_the_right_one() -> None:
    assert marks.misspelt(["dbleak_job", "no_dbleaks", "dbleak", "slow", "django_db"]) == [
        "@pytest.mark.dbleak_job is not a marker of pytest-dbleak; did you mean "
        "@pytest.mark.dbleak_jobs?",
        "@pytest.mark.no_dbleaks is not a marker of pytest-dbleak; did you mean "
        "@pytest.mark.no_dbleak?",
    ]
