"""Every inner run sees a clean DBLEAK_* environment and the real template cache."""

from __future__ import annotations

import os

import pytest

from tests.acceptance.helpers import BEHAVIOUR_SETTINGS, TEMPLATE_CACHE


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see no DBLEAK_* setting from the outer environment."""
    for name in BEHAVIOUR_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBLEAK_CACHE_DIR", os.environ.get("DBLEAK_CACHE_DIR", TEMPLATE_CACHE))
