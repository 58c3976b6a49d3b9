"""Server families behind one seam (``base.Family``); ``get`` names the one to use.

A family is imported when it is asked for: a MySQL session never imports PostgreSQL's.
No pytest import.
"""

from __future__ import annotations

import importlib

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.families.base import Family

# name -> the module that defines FAMILY
_FAMILIES = {
    "mysql": "pytest_dbleak.families.mysql.family",
    "postgresql": "pytest_dbleak.families.postgresql.family",
}


def get(name: str) -> Family:
    """The family called `name`."""
    module = _FAMILIES.get(name)
    if module is None:
        raise DbleakError(f"unknown server family {name!r}; one of: {', '.join(_FAMILIES)}")
    family: Family = importlib.import_module(module).FAMILY
    return family
