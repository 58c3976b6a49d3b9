"""A real ``mariadbd`` for the family tests that run in process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.families.base import RunningServer
from pytest_dbleak.families.mysql.embedded import find_mysqld, start_process

CACHE = Path(Settings(cache_dir=os.environ.get("DBLEAK_CACHE_DIR")).template_cache)


@contextmanager
def started_mariadb() -> Iterator[RunningServer]:
    """A server of its own (the process backend's), stopped at the end."""
    binary = find_mysqld(None)
    if binary is None:
        pytest.skip("no mariadbd or mysqld on PATH")
    running = start_process(binary, CACHE, 30)
    try:
        yield running
    finally:
        running.stop()
