"""Every SQLAlchemy internal the tracker relies on, in one place.

Public events are used where SQLAlchemy has them (pool events on the ``Pool`` class and
on single pools). Five things have no public API, and live here:

- pool creation: SQLAlchemy has no pool-creation event, so ``Pool.__new__`` is replaced;
  it also sees the ``_dispatch`` that ``Pool.recreate()`` (``Engine.dispose()``) hands
  the new pool, and so which pool it replaces;
- a listener attached to a pool before its ``__init__`` ran (the ``asyncio`` keyword
  spares the listen call from reading the pool's dialect, which ``__init__`` sets);
- the listeners ``Pool.recreate()`` copied to the new pool: ``event.contains()`` does
  not see copied listeners (they are filed under the old pool), the pool's
  ``dispatch.connect`` collection does;
- whether a pool resets connections on return (``Pool._reset_on_return``);
- the pool of a connection record (``_ConnectionRecord.__pool``), for a connection
  whose pool's connect listener somebody removed.

Test suites clear SQLAlchemy's event registry (``Pool.dispatch._clear()``) in their
teardowns: ``has_*()`` tell the tracker, in a few
microseconds before every check, whether its listeners are still there
(``Tracker.verify()`` puts them back), and every removal tolerates a listener that is
gone already.

Checked on the versions in ``CHECKED_ON``. ``Tracker.install()`` proves on a throw-away
pool that each of them still behaves as described; when one does not, the run stops with
``misfit()``'s one line instead of a gate that silently finds nothing.

No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import reset_none

from pytest_dbleak.engine.errors import DbleakError

if TYPE_CHECKING:
    from collections.abc import Mapping


class Tracking(Protocol):
    """What prove() reads of the tracker (tracking.Tracker), without importing it."""

    @property
    def states(self) -> Mapping[Pool, Any]: ...

    def mark(self) -> int: ...

    def forget_since(self, mark: int, pools: tuple[Pool, ...]) -> None: ...


CHECKED_ON = "SQLAlchemy 2.0.58 and 2.1.9"
# Pool events listened to on the Pool class; "connect" is listened to per pool, so that
# the listener knows its pool without the connection record's private attribute.
CLASS_EVENTS = ("checkout", "checkin", "close", "detach", "close_detached")


class SeamError(DbleakError):
    """An internal of SQLAlchemy no longer behaves as pytest-dbleak was checked on."""


def misfit(what: str) -> SeamError:
    return SeamError(
        f"pytest-dbleak cannot watch SQLAlchemy {sqlalchemy.__version__}: {what} "
        f"(checked on {CHECKED_ON})"
    )


# -- pool creation ---------------------------------------------------------------------
# Seen in __new__, not __init__: SQLAlchemy reads the pool classes' __init__ signatures
# to route create_engine() keywords, and a wrapper there would hide them. The __new__
# stays once installed (deleting it again leaves CPython's slot pointing at
# object.__new__ with arguments, which raises); without a hook it only calls
# object.__new__.
# A hook gets the pool and, for a pool built by Pool.recreate() (Engine.dispose()), the
# dispatch of the pool it replaces (recreate() passes ``_dispatch=self.dispatch``, which
# __init__ copies the listeners from): the recreated pool is told apart at creation,
# with no listener on the Engine class - which would turn every engine's
# ``_has_events`` on, something test suites assert on.
_CREATION_HOOKS: list[Callable[[Pool, Any], None]] = []


def _pool_new(cls: type[Pool], *args: Any, **kwargs: Any) -> Pool:
    pool = object.__new__(cls)
    recreated_from = kwargs.get("_dispatch")
    for hook in _CREATION_HOOKS:
        hook(pool, recreated_from)
    return pool


_pool_new.dbleak = True  # type: ignore[attr-defined]  # ours, also from a re-imported module


def on_pool_created(hook: Callable[[Pool, Any], None]) -> None:
    """Call `hook(pool, recreated_from)` for every pool constructed from now on, before
    its __init__; `recreated_from` is the dispatch of the pool recreate() replaces."""
    current = Pool.__dict__.get("__new__")
    ours = getattr(getattr(current, "__func__", None), "dbleak", False)
    if current is not None and not ours:
        raise misfit("Pool defines its own __new__")
    if getattr(current, "__func__", None) is not _pool_new:
        Pool.__new__ = staticmethod(_pool_new)  # type: ignore[assignment]
    if hook not in _CREATION_HOOKS:
        _CREATION_HOOKS.append(hook)


def remove_pool_created(hook: Callable[[Pool, Any], None]) -> None:
    if hook in _CREATION_HOOKS:
        _CREATION_HOOKS.remove(hook)


def pool_creation_seen(hook: Callable[[Pool, Any], None]) -> bool:
    """Whether Pool.__new__ is still ours and still calls `hook` (a dictionary lookup)."""
    current = Pool.__dict__.get("__new__")
    return getattr(current, "__func__", None) is _pool_new and hook in _CREATION_HOOKS


def foreign_pool_new() -> str | None:
    """The qualified name of a Pool.__new__ somebody else put there, if any."""
    current = Pool.__dict__.get("__new__")
    func = getattr(current, "__func__", current)
    if current is None or getattr(func, "dbleak", False):
        return None
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


# -- listeners -------------------------------------------------------------------------
def listen_pool_class(name: str, fn: Callable[..., None]) -> None:
    event.listen(Pool, name, fn)


def remove_pool_class(name: str, fn: Callable[..., None]) -> None:
    # Gone already when the suite cleared Pool.dispatch: event.remove() would raise.
    if event.contains(Pool, name, fn):
        event.remove(Pool, name, fn)


def has_pool_class(name: str, fn: Callable[..., None]) -> bool:
    """Whether `fn` still listens to `name` on the Pool class: ``Pool.dispatch._clear()``
    (which test suites call in teardowns) and ``event.remove`` take it away silently.
    About 2 microseconds (a dictionary lookup in SQLAlchemy's event registry)."""
    return event.contains(Pool, name, fn)


def dispatch_of(pool: Pool) -> Any:
    """The pool's own dispatch if it was made (SQLAlchemy caches it in the instance's
    ``__dict__`` on first use), without making it."""
    return pool.__dict__.get("dispatch")


def pool_of_record(record: Any) -> Pool | None:
    """The pool a connection record belongs to (``_ConnectionRecord.__pool``): for a
    connection whose pool's connect event did not reach us (its listener was removed)."""
    pool = getattr(record, "_ConnectionRecord__pool", None)
    return pool if isinstance(pool, Pool) else None


def listen_connect(pool: Pool, fn: Callable[..., None]) -> None:
    """`fn(dbapi_connection, record)` when `pool` opens a connection.

    Called from on_pool_created() hooks, before the pool's __init__: ``asyncio=False``
    keeps PoolEvents._listen from reading ``pool._dialect`` (not set yet). Pool.recreate()
    copies the listener to the new pool (``_dispatch=self.dispatch``): the tracker tells
    the two apart (see Tracker._on_pool_created()).
    """
    event.listen(pool, "connect", fn, asyncio=False)


def remove_connect(pool: Pool, fn: Callable[..., None]) -> None:
    """Remove a listener listen_connect() attached to `pool` itself (a copied one stays:
    SQLAlchemy files it under the pool it was copied from)."""
    if event.contains(pool, "connect", fn):
        event.remove(pool, "connect", fn)


def has_connect(pool: Pool, fn: Callable[..., None]) -> bool:
    """Whether `pool` still runs `fn` on connect (its own or a copied listener)."""
    return any(f is fn for f in pool.dispatch.connect)


# -- pool settings -----------------------------------------------------------------------
_MISSING = object()


def resets_on_return(pool: Pool) -> bool:
    """Whether `pool` rolls back (or commits) a connection given back to it."""
    value = getattr(pool, "_reset_on_return", _MISSING)
    # Inside pool events: never raise, assume the default. prove_reset_on_return() checks.
    return value is _MISSING or value is not reset_none


def prove_reset_on_return(default_pool: Pool, no_reset_pool: Pool) -> None:
    for pool, expected in ((default_pool, True), (no_reset_pool, False)):
        if getattr(pool, "_reset_on_return", _MISSING) is _MISSING:
            raise misfit("Pool._reset_on_return is gone")
        if resets_on_return(pool) is not expected:
            raise misfit("Pool._reset_on_return no longer tells reset_on_return=None apart")


# -- the proof, at install ------------------------------------------------------------
def prove(tracker: Tracking) -> None:
    """Open and return one connection of throw-away SQLite pools, and check that every
    event the tracker relies on arrived with its pool known.

    Pools over the sqlite3 module, no engine: an engine would import SQLAlchemy's SQLite
    dialect (~7 ms of every session) for what ``Pool.recreate()``, the call
    ``Engine.dispose()`` makes, proves alone.
    """
    import sqlite3

    from sqlalchemy.pool import QueuePool

    def creator() -> Any:
        return sqlite3.connect(":memory:")

    mark = tracker.mark()
    pool = QueuePool(creator)
    no_reset = QueuePool(creator, reset_on_return=None)
    recreated_pool: QueuePool | None = None
    try:
        state = tracker.states.get(pool)
        if state is None or state.created_seq < mark:
            raise misfit("Pool.__new__ no longer sees a pool being created")
        proxy = pool.connect()
        conns = list(state.open.values())
        if len(conns) != 1 or conns[0].pool is not state:
            raise misfit("a pool's connect event no longer reaches its listener")
        if conns[0].checkout is None:
            raise misfit("the checkout event on the Pool class no longer arrives")
        if pool_of_record(getattr(proxy, "_connection_record", None)) is not pool:
            raise misfit("_ConnectionRecord.__pool no longer names a record's pool")
        proxy.close()
        if conns[0].checkout is not None or conns[0].checkin_seq < mark:
            raise misfit("the checkin event on the Pool class no longer arrives")
        prove_reset_on_return(pool, no_reset)
        recreated_pool = pool.recreate()
        recreated = tracker.states.get(recreated_pool)
        if recreated is None or recreated.origin is not state:
            raise misfit("Pool.recreate() no longer names the pool it replaces")
        pool.dispose()
        if state.open:
            raise misfit("the close event on the Pool class no longer arrives")
    finally:
        pool.dispose()
        made = (pool, no_reset) if recreated_pool is None else (pool, no_reset, recreated_pool)
        tracker.forget_since(mark, made)  # nothing may count later
