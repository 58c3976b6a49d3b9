"""Putting the tracker's listeners and wrappers in place, proving them, and putting back
what a test suite took away: the ``Tracker``'s ``install``, ``uninstall`` and ``verify``
(a mixin: the Tracker holds the state and the event handlers named below).

No pytest import.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import Pool

from pytest_dbleak.engine import _sqla_seam as seam

if TYPE_CHECKING:
    from pytest_dbleak.engine.children import Children
    from pytest_dbleak.engine.drivers import DriverTracer
    from pytest_dbleak.engine.import_watch import ImportWatch
    from pytest_dbleak.engine.records import PoolState
    from pytest_dbleak.engine.threads import ThreadStarts

log = logging.getLogger("pytest_dbleak.engine.tracking")  # where these lines always came from


class Instrumentation:
    """The install, uninstall and verify of ``tracking.Tracker``; the Tracker's
    ``_on_<event>`` methods are the listeners (``seam.CLASS_EVENTS``)."""

    # What the Tracker provides.
    installed: bool
    seq: int
    lost_seq: int
    lost: list[str]
    states: weakref.WeakKeyDictionary[Pool, PoolState]
    drivers: DriverTracer
    import_watch: ImportWatch
    children: Children
    threads: ThreadStarts
    _lock: threading.RLock

    def tick(self) -> int:
        raise NotImplementedError

    def _on_pool_created(self, pool: Pool, recreated_from: Any) -> None:
        raise NotImplementedError

    def mark(self) -> int:  # what seam.prove() reads, with states and forget_since
        raise NotImplementedError

    def forget_since(self, mark: int, pools: tuple[Pool, ...]) -> None:
        raise NotImplementedError

    def install(self) -> None:
        """Listen to SQLAlchemy and the drivers; prove that the events arrive.

        Raises SeamError (a DbleakError, one line naming the versions) when an internal
        the tracker relies on is missing or behaves differently.
        """
        if self.installed:
            return
        seam.on_pool_created(self._on_pool_created)
        for name in seam.CLASS_EVENTS:
            seam.listen_pool_class(name, getattr(self, f"_on_{name}"))
        self.installed = True
        try:
            seam.prove(self)
        except seam.SeamError:
            self.uninstall()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the run must stop on it
            self.uninstall()
            raise seam.misfit(
                f"a throw-away pool failed: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from None
        self.drivers.trace_imported()
        self.import_watch.install()
        self.children.install(lambda: self.seq)
        self.threads.install()

    def uninstall(self) -> None:
        """Take the listeners and wrappers away again."""
        if not self.installed:
            return
        # Each removal tolerates a listener the suite took away already.
        for name in seam.CLASS_EVENTS:
            seam.remove_pool_class(name, getattr(self, f"_on_{name}"))
        seam.remove_pool_created(self._on_pool_created)
        for pool, state in list(self.states.items()):
            try:
                seam.remove_connect(pool, state.listener)
            except Exception as exc:  # noqa: BLE001 - a pool in any state must not stop the end
                log.debug("dbleak: connect listener of %r: %s", pool, exc)
        self.import_watch.uninstall()
        self.drivers.restore()
        self.children.uninstall()
        self.threads.uninstall()
        self.installed = False

    def verify(self) -> bool:
        """Put back whatever of the instrumentation somebody removed or replaced since the
        last look (``Pool.dispatch._clear()``, ``Engine.dispatch._clear()``,
        ``event.remove``, a monkeypatch undone); True when something was missing. Then
        ``lost_seq`` says from when events can be trusted again. Microseconds: runs
        before every check. Nothing listens on the Engine class (see _sqla_seam), so
        ``Engine.dispatch._clear()`` takes nothing.

        Raises SeamError when somebody put their own ``Pool.__new__`` in place of ours
        (one line naming it): no pool created from then on would be seen.
        """
        if not self.installed:
            return False
        missing = []
        if not seam.pool_creation_seen(self._on_pool_created):
            foreign = seam.foreign_pool_new()
            if foreign is not None:
                raise seam.misfit(f"Pool.__new__ was replaced by {foreign}")
            seam.on_pool_created(self._on_pool_created)
            missing.append("Pool.__new__")
        for name in seam.CLASS_EVENTS:
            listener = getattr(self, f"_on_{name}")
            if not seam.has_pool_class(name, listener):
                seam.listen_pool_class(name, listener)
                missing.append(f"Pool {name} listener")
        missing += self.drivers.verify()
        if not missing:
            return False
        with self._lock:
            self.lost_seq = self.tick()
            self.lost = missing
        log.info("dbleak: put back instrumentation somebody removed: %s", ", ".join(missing))
        return True
