"""Which server family a session checks: the one whose fixtures its tests request.

The choice is made twice. Before collection (``predict``), so that the server boots
while the test modules import: from ``--dbleak-family``, else what the last run of this
suite chose (pytest's cache), else what the options name, else MySQL. After collection
(``choose``), from the fixtures the collected tests request; a wrong prediction is then
stopped before any test runs, so a PostgreSQL suite never pays for a MySQL server twice
and a MySQL suite is not slowed by waiting for its collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pytest_dbleak import families
from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.runtime import Runtime
from pytest_dbleak.engine.settings import Settings

if TYPE_CHECKING:
    from pytest_dbleak.engine.broker import Broker

CACHE_KEY = "dbleak/family"

# The fixtures that belong to one family; ``dbleak`` (the explicit-check handle) serves
# whichever family the session checks.
FIXTURES: dict[str, tuple[str, ...]] = {
    "mysql": ("dbleak_mysql_url", "dbleak_server", "dbleak_database"),
    "postgresql": (
        "dbleak_postgresql_url",
        "dbleak_postgresql_server",
        "dbleak_postgresql_database",
    ),
}
NEUTRAL = ("dbleak",)
TITLES = {"mysql": "MySQL", "postgresql": "PostgreSQL"}


def predict(settings: Settings, remembered: Any) -> str | None:
    """The family to start before collection; None to wait for the tests to say (no
    setting, no URL option and no earlier run of this suite names one)."""
    if settings.family != "auto":
        return settings.family
    if remembered in FIXTURES:
        return str(remembered)
    if settings.postgresql_url and not settings.mysql_url:
        return "postgresql"
    if settings.mysql_url:
        return "mysql"
    return None


def wanted(items: Iterable[Any]) -> dict[str, list[str]]:
    """family -> the node ids of the tests that request one of its fixtures."""
    found: dict[str, list[str]] = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        for family, fixtures in FIXTURES.items():
            if any(n in names for n in fixtures):
                found.setdefault(family, []).append(item.nodeid)
    return found


def uses_server(item: Any) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n in names for fixtures in (*FIXTURES.values(), NEUTRAL) for n in fixtures)


def choose(settings: Settings, found: dict[str, list[str]], predicted: str) -> str:
    """The family the session checks, from what its tests request; DbleakError when
    they request two, or one that ``--dbleak-family`` excludes."""
    if len(found) > 1:
        examples = "; ".join(f"{nodeids[0]} uses {TITLES[f]}" for f, nodeids in found.items())
        raise DbleakError(
            f"one session checks one server family, and these tests request both ({examples}): "
            "run them in separate sessions (paths, -k or -m)"
        )
    if settings.family != "auto":
        for family, nodeids in found.items():
            if family != settings.family:
                raise DbleakError(
                    f"--dbleak-family is {settings.family}, but {nodeids[0]} requests a "
                    f"{TITLES[family]} fixture"
                )
        return settings.family
    if found:
        return next(iter(found))
    return predicted


class FamilyChoice:
    """Owns the session's choice of family: the prediction, the switch after collection,
    the xdist controller's broker (and its servers of other families), the memory of the
    choice for the next run. The manager owns it; it changes only ``runtime``."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        *,
        broker_path: str | None,
        mysql_required: Callable[[], bool],
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self._broker_path = broker_path  # an xdist worker: the controller's broker
        self._mysql_required = mysql_required  # Django's MySQL aliases are redirected
        self.broker: Broker | None = None  # the xdist controller's, for its workers
        self._served: dict[str, Runtime] = {}  # the controller's servers of other families
        self.from_tests: str | None = None  # what the tests requested: remembered

    def predict(self, *, worker: bool, remembered: Any) -> str | None:
        if worker:
            return self.runtime.shared_family  # the controller predicted and started it
        if self.settings.family == "auto" and self._mysql_required():
            return "mysql"
        return predict(self.settings, remembered)

    def start_predicted(self, name: str, start: Callable[[], Any]) -> None:
        """Start the predicted family's server: its error is the run's at once when the
        settings name the family, else only once the tests turn out to need it."""
        self.runtime.switch(families.get(name))
        try:
            start()
        except DbleakError:
            if self.settings.family != "auto" or self._mysql_required():
                raise

    def open_broker(self) -> str:
        from pytest_dbleak.engine.broker import Broker

        self.broker = Broker(self._serve)
        return self.broker.path

    def _serve(self, name: str) -> dict[str, Any]:
        """The controller's `name` server for a worker (the Broker's question)."""
        if name not in FIXTURES:
            raise DbleakError(f"unknown server family {name!r}")
        runtime = self.runtime
        if runtime.family.name != name:
            if not runtime.started:
                runtime.switch(families.get(name))
            else:
                runtime = self._served.get(name) or self._served.setdefault(
                    name, runtime.sibling(families.get(name))
                )
        running = runtime.server().running
        assert running is not None
        return {
            "family": name,
            "backend": running.backend,
            "endpoint": runtime.family.endpoint_fields(running.endpoint),
        }

    def serve(self, items: list[Any], *, checked: bool) -> str | None:
        """Switch to the family the collected `items` request and start its server (with
        the checks when `checked`). Returns the family when the tests named it."""
        found = wanted(items)
        chosen = choose(self.settings, found, self.runtime.family.name)
        if found:
            self.from_tests = chosen
        self.runtime.switch(families.get(chosen))  # stops a wrong prediction's server
        if not checked and not any(uses_server(i) for i in items):
            return self.from_tests  # fixtures without --dbleak: only for tests that ask
        runtime = self.runtime
        if self._broker_path and runtime.shared_family != chosen and not runtime.started:
            from pytest_dbleak.engine import broker

            # Long enough for the controller to start it, after another worker's request.
            runtime.share(broker.ask(self._broker_path, chosen, self.settings.startup_timeout * 2))
        if checked:
            runtime.checks()
        else:
            runtime.database()
        return self.from_tests

    def tested(self) -> Runtime:
        """The runtime of the family the tests used: on an xdist controller whose
        prediction was wrong, the one it started for the workers afterwards."""
        return self._served.get(self.from_tests or "", self.runtime)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        for runtime in self._served.values():
            runtime.close()
