"""The pytest internals the plugin relies on, in one place.

Checked on pytest 8.0 - 9.2. Each use is checked when the run starts (``check``) and
again where it is used, and a shape that no longer fits stops the run with one line
naming the versions: a leak gate that silently detects nothing is worse than none.

Public hooks come first; what is here has no public equivalent:

- ``SetupState.stack``: the node -> (finalizers, setup error) map that
  ``teardown_exact`` unwinds. A test's leak window ends after the last finalizer of
  the test's own node and before any finalizer of a wider node (class, module,
  package, session) - pytest runs those inside the teardown of the last test of a
  scope, and they would erase the leak before the verdict. A finalizer placed first
  on the item's list is popped last, i.e. exactly at that boundary.
- ``LFPlugin.lastfailed`` (the cache provider's "lfplugin"): the nodeid -> True map that
  ``--lf`` reads. pytest forgets a test there once its call passed; a run interrupted in
  that test's teardown (stuck behind a leak, then Ctrl-C or a CI time limit) never sends
  the teardown report that would fail it, so the test is put back.
- The ``Repr*`` classes that build a failure's long representation (the same objects
  pytest builds for a failed test, so every reporter and xdist's serialiser takes them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_dbleak.engine.errors import DbleakError

CHECKED_ON = "pytest 8.0 - 9.2"

try:
    from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTracebackNative
except ImportError as exc:  # pragma: no cover - only on a pytest this was not checked on
    raise DbleakError(
        f"pytest {pytest.__version__} has no _pytest._code.code.{exc.name or 'Repr*'} "
        f"(pytest-dbleak was checked on {CHECKED_ON})"
    ) from None


def _misfit(what: str) -> DbleakError:
    return DbleakError(
        f"pytest {pytest.__version__}: {what}; pytest-dbleak was checked on {CHECKED_ON} "
        "and cannot place its leak window on this version"
    )


def misfit_message() -> str:
    """A test's window did not close where it was placed (something dropped the item's
    finalizers): its verdict would be wrong, so the run stops."""
    return str(_misfit("the finalizer that ends a test's leak window never ran"))


def check(session: pytest.Session) -> None:
    """Stop the run now if the setup state no longer has the shape the window needs."""
    state = getattr(session, "_setupstate", None)
    if state is None or not isinstance(getattr(state, "stack", None), dict):
        raise _misfit("Session._setupstate.stack is not a dict")
    if not callable(getattr(state, "teardown_exact", None)):
        raise _misfit("SetupState.teardown_exact is missing")


def run_after_item_teardown(item: pytest.Item, fn: Callable[[], object]) -> bool:
    """Have `fn` run after every finalizer of `item` itself, before any wider one.

    False when the item is not on the setup stack (a parent's setup failed, so none
    of the item's own code ran): the caller ends the window itself.
    """
    stack: dict[Any, Any] = item.session._setupstate.stack
    entry = stack.get(item)
    if entry is None:
        return False
    if not (isinstance(entry, tuple) and entry and isinstance(entry[0], list)):
        raise _misfit("a SetupState.stack entry is not (finalizers, error)")
    entry[0].insert(0, fn)  # popped last of this node's finalizers
    return True


def failure_repr(text: str, path: str, line: int, message: str) -> ReprExceptionInfo:
    """A long representation that prints `text` and whose crash line is path:line."""
    return ReprExceptionInfo(
        reprtraceback=ReprTracebackNative([text if text.endswith("\n") else text + "\n"]),
        reprcrash=ReprFileLocation(path, line, message),
    )


def keep_for_last_failed(config: pytest.Config, nodeids: set[str]) -> None:
    """Have ``--lf`` run `nodeids` again: their run was interrupted before a verdict."""
    plugin = config.pluginmanager.get_plugin("lfplugin")
    if plugin is None or not nodeids:
        return  # the cache provider is off: nothing remembers failures
    lastfailed = getattr(plugin, "lastfailed", None)
    if not isinstance(lastfailed, dict):
        raise _misfit("the cache provider's LFPlugin.lastfailed is not a dict")
    lastfailed.update(dict.fromkeys(nodeids, True))
