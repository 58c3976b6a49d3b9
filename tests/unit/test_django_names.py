"""The names the Django support gives test databases, the grant pattern that covers them,
and the seam's one-line refusal of a pytest-django it does not fit."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from pytest_dbleak.engine import _django_seam
from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.families.mysql.monitor import _prefix_pattern
from pytest_dbleak.pytest_layer.django_support import _tag


def test_each_alias_gets_its_own_short_identifier_safe_tag() -> None:
    taken: set[str] = set()
    tags = [_tag(alias, taken) for alias in ("default", "read-only", "readonly", "ü", "x" * 40)]
    assert tags == ["default", "readonly", "readonly2", "db", "x" * 16]


def _like(pattern: str, name: str) -> bool:
    """MySQL's LIKE (and grant wildcard) semantics: `\\_` literal, `_` one, `%` any."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += {"_": ".", "%": ".*"}.get(pattern[i], re.escape(pattern[i]))
        i += 1
    return re.fullmatch(regex, name) is not None


@pytest.mark.parametrize(
    ("name", "covered"),
    [
        ("dbleak_main_9a1dbd_default", True),
        ("dbleak_main_9a1dbd_default_gw0", True),
        ("dbleak_main_9a1dbd", False),  # the session's own: granted on its own
        ("dbleakXmainX9a1dbdXdefault", False),  # `_` is literal, not "any one character"
        ("dbleak_main_9a1dbdXdefault", False),
        ("dbleak_main_9a1dbe_default", False),  # another session's
    ],
)
def test_the_grant_pattern_covers_exactly_the_sessions_test_databases(
    name: str, covered: bool
) -> None:
    assert _prefix_pattern("dbleak_main_9a1dbd") == "dbleak\\_main\\_9a1dbd\\_%"
    assert _like(_prefix_pattern("dbleak_main_9a1dbd"), name) is covered


def test_a_pytest_django_blocker_of_another_shape_stops_the_run_naming_the_versions() -> None:
    pytest.importorskip("pytest_django")
    from pytest_django.plugin import blocking_manager_key

    stash = pytest.Stash()
    stash[blocking_manager_key] = object()  # type: ignore[assignment]  # no _real_ensure_connection
    with pytest.raises(DbleakError, match=r"checked on Django [\d.]+, pytest-django [\d.]+"):
        _django_seam.blocker(SimpleNamespace(stash=stash))
