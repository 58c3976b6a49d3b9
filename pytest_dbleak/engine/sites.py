"""Which frames of a stack are the user's: where a leak report points.

No pytest import. Library frames (site-packages, the standard library, this plugin),
database machinery and interpreter entry points are dropped.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from pytest_dbleak.engine.results import Leak, Site
from pytest_dbleak.engine.stacks import Frame

_LIBRARY_DIRS = tuple(
    {
        os.path.realpath(p) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    # This plugin: the package folder, not this module's layer folder.
    | {str(Path(__file__).resolve().parents[1]) + os.sep}
)
# Interpreter entry points: console-script launchers (`bin/pytest`, `Scripts\\pytest.exe`)
# live in the scripts directories of the install schemes and next to the interpreter.
_ENTRY_DIRS = tuple(
    {
        form + os.sep
        for path in (
            *(
                sysconfig.get_path("scripts", scheme)
                for scheme in sysconfig.get_scheme_names()
                if scheme in (sysconfig.get_default_scheme(), f"{os.name}_user")
            ),
            os.path.dirname(sys.executable),
        )
        if path
        for form in (os.path.normpath(path), os.path.realpath(path))
    }
)
_MACHINERY = tuple(
    f"{os.sep}{name}{os.sep}"
    for name in (
        "sqlalchemy",
        "pymysql",
        "pytest_dbleak",
        "_pytest",
        "pluggy",
        "flask_sqlalchemy",
        "MySQLdb",
        "mysql",
        "mariadb",
        "aiomysql",
        "asyncmy",
        "greenlet",
        "asyncio",
        "django",
        "pytest_django",
    )
)


def user_sites(stack: tuple[Frame, ...], root: Path, limit: int = 8) -> list[Site]:
    """The frames of user code in `stack` (innermost first), outermost first.

    Entry frames (console-script launchers, runpy, ``-c`` code) are never user code.
    Library frames (site-packages, the standard library, this plugin) are dropped; if
    nothing is left - say, the project itself is installed - only the database
    machinery is dropped.
    """
    stack = tuple(f for f in stack if not _is_entry_point(f[0]))
    frames = [f for f in stack if not _is_library(f[0])]
    if not frames:
        frames = [f for f in stack if not any(m in f[0] for m in _MACHINERY)]
    return [Site(_relative(f[0], root), f[1], f[2]) for f in frames[:limit]][::-1]


def _is_entry_point(filename: str) -> bool:
    # "<frozen runpy>", "<string>"; a launcher script; a zipapp-style `pytest.exe/__main__.py`.
    return (
        filename.startswith("<")
        or filename.startswith(_ENTRY_DIRS)
        or f".exe{os.sep}" in filename.lower()
    )


def _is_library(filename: str) -> bool:
    return filename.startswith("<") or filename.startswith(_LIBRARY_DIRS)


def _relative(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).relative_to(root))
    except ValueError:
        return filename


def site_leak(
    kind: str, count: int, what: str, stack: tuple[Frame, ...], thread: str | None, root: Path
) -> Leak:
    """A leak pointing at the user's frames of `stack` (innermost at `site`)."""
    sites = user_sites(stack, root)
    return Leak(kind, count, what, site=sites[-1] if sites else None, stack=sites, thread=thread)
