"""Which frames of a captured stack are the user's: entry points and libraries are not."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from pytest_dbleak.engine.results import Site
from pytest_dbleak.engine.sites import user_sites

ROOT = Path("/srv/project")
SCRIPTS = sysconfig.get_path("scripts")
PURELIB = sysconfig.get_path("purelib")


def test_a_console_script_launcher_runpy_and_library_frames_are_not_user_code() -> None:
    stack = (  # innermost first, as capture_stack records it
        (f"{PURELIB}/sqlalchemy/engine/base.py", 140, "connect"),
        ("/srv/project/tests/test_orders.py", 16, "open_order"),
        ("/srv/project/tests/test_orders.py", 22, "test_checkout"),
        (f"{PURELIB}/_pytest/python.py", 157, "pytest_pyfunc_call"),
        (f"{PURELIB}/pytest/__main__.py", 9, "<module>"),
        ("<frozen runpy>", 88, "_run_code"),
        (os.path.join(SCRIPTS, "pytest"), 8, "<module>"),
    )
    assert user_sites(stack, ROOT) == [
        Site("tests/test_orders.py", 22, "test_checkout"),
        Site("tests/test_orders.py", 16, "open_order"),
    ]


def test_a_launcher_next_to_the_interpreter_is_dropped_also_for_an_installed_project() -> None:
    # The project installed in site-packages: only database machinery is dropped then,
    # and still never the launcher.
    stack = (
        (f"{PURELIB}/sqlalchemy/pool/base.py", 10, "connect"),
        (f"{PURELIB}/myapp/db.py", 5, "session"),
        (os.path.join(os.path.dirname(sys.executable), "myapp-worker"), 8, "<module>"),
    )
    assert user_sites(stack, ROOT) == [Site(f"{PURELIB}/myapp/db.py", 5, "session")]


def test_code_run_with_python_c_and_a_windows_launcher_are_entry_points() -> None:
    stack = (
        ("/srv/project/app.py", 3, "work"),
        ("<string>", 1, "<module>"),
        (os.path.join("C:", "venv", "Scripts", "pytest.exe", "__main__.py"), 7, "<module>"),
    )
    assert user_sites(stack, ROOT) == [Site("app.py", 3, "work")]


def test_only_the_innermost_frames_are_kept_up_to_the_limit() -> None:
    stack = tuple((f"/srv/project/m{i}.py", i, f"f{i}") for i in range(12))
    sites = user_sites(stack, ROOT, limit=3)
    assert sites == [Site("m2.py", 2, "f2"), Site("m1.py", 1, "f1"), Site("m0.py", 0, "f0")]


def test_no_frame_of_this_plugin_is_user_code_whatever_its_layer() -> None:
    # The plugin may be checked out inside the project (an editable install): its frames,
    # in any of its layer folders, are still not where the user's leak is.
    package = Path(user_sites.__code__.co_filename).resolve().parents[1]
    stack = (
        (str(package / "pytest_layer" / "django_support.py"), 264, "ensure_connection"),
        (str(package / "engine" / "tracking.py"), 90, "on_checkout"),
        (str(package / "families" / "mysql" / "monitor.py"), 40, "query"),
        ("/srv/project/tests/test_orm.py", 94, "poll"),
    )
    assert user_sites(stack, ROOT) == [Site("tests/test_orm.py", 94, "poll")]
