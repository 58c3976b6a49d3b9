"""pytest entry point: options, markers, and the manager that owns the run.

Loaded through the ``pytest11`` entry point ``dbleak``; ``-p no:dbleak`` turns it off.
"""

from __future__ import annotations

import os

import pytest

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.settings import OPTIONS, resolve
from pytest_dbleak.pytest_layer import marks
from pytest_dbleak.pytest_layer.fixtures import (
    dbleak,
    dbleak_database,
    dbleak_http_load,
    dbleak_jobs,
    dbleak_mysql_url,
    dbleak_postgresql_database,
    dbleak_postgresql_server,
    dbleak_postgresql_url,
    dbleak_server,
    dbleak_socket_churn,
)
from pytest_dbleak.pytest_layer.manager import MANAGER, DbleakManager

__all__ = [
    "dbleak",
    "dbleak_database",
    "dbleak_http_load",
    "dbleak_jobs",
    "dbleak_mysql_url",
    "dbleak_postgresql_database",
    "dbleak_postgresql_server",
    "dbleak_postgresql_url",
    "dbleak_server",
    "dbleak_socket_churn",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbleak", "database connection leak detection")
    for spec in OPTIONS:
        if spec.is_flag:
            group.addoption(
                spec.flag, action="store_true", default=None, dest=spec.dest, help=spec.cli_help
            )
            group.addoption(
                spec.negative,
                action="store_false",
                default=None,
                dest=spec.dest,
                help=f"switch {spec.flag} off over the ini file and environment.",
            )
        else:
            group.addoption(
                spec.flag,
                default=None,
                dest=spec.dest,
                metavar=spec.metavar,
                help=spec.cli_help,
            )
        parser.addini(spec.ini, spec.help, default=None)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_dbleak import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    for name in marks.MARKERS:
        config.addinivalue_line("markers", marks.marker_line(name))
    try:
        settings = resolve(
            cli={spec.dest: config.getoption(spec.dest) for spec in OPTIONS},
            env=os.environ,
            ini={spec.ini: config.getini(spec.ini) for spec in OPTIONS},
        )
    except DbleakError as exc:
        raise pytest.UsageError(f"dbleak: {exc}") from None
    manager = DbleakManager(config, settings)
    config.stash[MANAGER] = manager
    config.pluginmanager.register(manager, "dbleak_manager")


def pytest_unconfigure(config: pytest.Config) -> None:
    manager = config.stash.get(MANAGER, None)
    if manager is not None:
        manager.close()  # idempotent; covers runs that never reached sessionfinish
        config.pluginmanager.unregister(manager)
        del config.stash[MANAGER]
