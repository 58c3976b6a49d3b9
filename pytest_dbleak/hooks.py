"""Hooks pytest-dbleak publishes, so that a conftest or another plugin can consume its
verdicts without reading the plugin's internals (registered in ``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin like any pytest hook::

    def pytest_dbleak_result(item, result):
        if result.leaks:
            print(item.nodeid, result.leaked)

Results are ``pytest_dbleak.engine.results.CheckResult`` objects, frozen: made once,
never changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dbleak.engine.results import CheckResult
    from pytest_dbleak.families.base import ServerInfo


@pytest.hookspec
def pytest_dbleak_server(config: pytest.Config, server: ServerInfo) -> None:
    """The session's server answers: its backend, host, port and version.

    Called once in each process that reaches the server (with xdist: the controller, which
    starts it, and each worker), before the first test runs.
    """


@pytest.hookspec
def pytest_dbleak_result(item: pytest.Item, result: CheckResult) -> None:
    """The verdict of one test's leak check, once per checked test (once per attempt when a
    rerun plugin runs it again), after the baseline and ``report_only`` were applied.

    Called in the process that ran the test: on an xdist worker, not on the controller.
    """


@pytest.hookspec
def pytest_dbleak_sessionfinish(session: pytest.Session, results: list[CheckResult]) -> None:
    """Every checked test's verdict, at the end of the session, before the reports are
    written: tests skipped in their setup are not in ``results``.

    Called where the results come together: in a single process, or on the xdist
    controller (with every worker's results); not on the workers.
    """
