"""The choice of a session's server family, and the xdist controller's broker, in process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_dbleak.engine import broker
from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.settings import Settings
from pytest_dbleak.pytest_layer import family_choice


@dataclass
class Item:
    nodeid: str
    fixturenames: list[str] = field(default_factory=list)


def test_a_session_is_predicted_from_its_setting_then_the_last_run_then_a_url() -> None:
    predict = family_choice.predict
    assert predict(Settings(family="postgresql"), "mysql") == "postgresql"
    assert predict(Settings(), "postgresql") == "postgresql"
    assert predict(Settings(), "sqlite") is None  # a cache entry of no family is ignored
    assert predict(Settings(postgresql_url="postgresql://u@h/db"), None) == "postgresql"
    assert predict(Settings(mysql_url="mysql://root@h"), None) == "mysql"
    assert predict(Settings(), None) is None  # nothing says: wait for the tests


def test_the_tests_fixtures_choose_the_family_and_none_keeps_the_prediction() -> None:
    items = [Item("t.py::a", ["dbleak_postgresql_url"]), Item("t.py::b", ["tmp_path"])]
    found = family_choice.wanted(items)
    assert found == {"postgresql": ["t.py::a"]}
    assert family_choice.choose(Settings(), found, "mysql") == "postgresql"
    assert family_choice.choose(Settings(), {}, "postgresql") == "postgresql"
    assert family_choice.uses_server(Item("t.py::c", ["dbleak"]))
    assert not family_choice.uses_server(items[1])


def test_tests_of_both_families_are_refused_naming_one_of_each() -> None:
    found = family_choice.wanted(
        [
            Item("a.py::m", ["dbleak_database"]),
            Item("b.py::p", ["dbleak_postgresql_server"]),
            Item("b.py::q", ["dbleak_postgresql_url"]),
        ]
    )
    with pytest.raises(DbleakError, match=r"a\.py::m uses MySQL; b\.py::p uses PostgreSQL\)"):
        family_choice.choose(Settings(), found, "mysql")


def test_a_family_setting_refuses_tests_of_the_other_family() -> None:
    found = {"postgresql": ["t.py::p"]}
    with pytest.raises(DbleakError, match=r"--dbleak-family is mysql, but t\.py::p requests"):
        family_choice.choose(Settings(family="mysql"), found, "mysql")
    assert family_choice.choose(Settings(family="postgresql"), {}, "mysql") == "postgresql"


def test_the_broker_starts_a_family_once_for_workers_that_ask_at_the_same_time() -> None:
    started: list[str] = []
    gate = threading.Event()

    def serve(name: str) -> dict[str, Any]:
        if name == "nosuch":
            raise DbleakError("no nosuch server available")
        if name not in started:
            gate.wait(5)  # the second asker arrives while the first start is under way
            started.append(name)
        return {"family": name, "port": 5432}

    brk = broker.Broker(serve)
    try:
        answers: list[dict[str, Any]] = []
        askers = [
            threading.Thread(target=lambda: answers.append(broker.ask(brk.path, "pg", 10)))
            for _ in range(2)
        ]
        for asker in askers:
            asker.start()
        gate.set()
        for asker in askers:
            asker.join(10)
        assert answers == [{"family": "pg", "port": 5432}] * 2
        assert started == ["pg"]
        with pytest.raises(DbleakError, match=r"^no nosuch server available$"):
            broker.ask(brk.path, "nosuch", 10)
    finally:
        brk.close()
    with pytest.raises(DbleakError, match="cannot reach the xdist controller"):
        broker.ask(brk.path, "pg", 1)


def test_a_misspelt_family_is_one_line_with_the_nearest_one() -> None:
    from pytest_dbleak.engine.settings import resolve

    with pytest.raises(DbleakError, match=r"^--dbleak-family: unknown server family 'postgresq'; "):
        resolve(cli={"dbleak_family": "postgresq"}, env={}, ini={})
    assert resolve(cli={}, env={"DBLEAK_FAMILY": "postgres"}, ini={}).family == "postgresql"
