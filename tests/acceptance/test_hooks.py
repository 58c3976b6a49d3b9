"""The published hooks (pytest_dbleak.hooks): a conftest consumes every verdict without
reading the plugin's internals - one result per checked test where it ran, every result
once at the end where they come together (the xdist controller), and the server's facts.
"""

from __future__ import annotations

import json

import pytest

from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, only_dbleak_and

CONFTEST = """
import json
import os

import pytest

SEEN = os.environ["HOOKS_OUT"]


def _write(name, data):
    with open(os.path.join(SEEN, name), "a") as out:
        out.write(json.dumps(data) + "\\n")


@pytest.hookimpl(optionalhook=True)  # loads with the plugin off too
def pytest_dbleak_server(config, server):
    _write("server", {"backend": server.backend, "version": server.version})


@pytest.hookimpl(optionalhook=True)
def pytest_dbleak_result(item, result):
    _write("result", {"nodeid": item.nodeid, "leaked": result.leaked, "failed": result.failed})


@pytest.hookimpl(optionalhook=True)
def pytest_dbleak_sessionfinish(session, results):
    _write("sessionfinish", sorted([r.nodeid, r.leaked] for r in results))
"""

TESTS = """
def test_leaky(dbleak_mysql_url):
    KEEP.append(sa.create_engine(dbleak_mysql_url).connect())


def test_clean(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()


@pytest.mark.skip(reason="not run: not checked")
def test_skipped():
    pass
"""


def _read(path: object, name: str) -> list[object]:
    lines = (path / name).read_text().splitlines()  # type: ignore[operator]
    return [json.loads(line) for line in lines]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    out = pytester.mkdir("seen")
    monkeypatch.setenv("HOOKS_OUT", str(out))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hooked=PREAMBLE + TESTS)
    return pytester


@pytest.mark.parametrize("how", ["one process", "xdist"])
def test_a_conftest_receives_every_verdict_through_the_published_hooks(
    project: pytest.Pytester, how: str
) -> None:
    extra = ("-n", "2", *only_dbleak_and("xdist")) if how == "xdist" else ONLY_DBLEAK
    result = project.runpytest_subprocess("--dbleak", FAST, *extra)
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    seen = project.path / "seen"
    results = {r["nodeid"]: r for r in _read(seen, "result")}  # type: ignore[index]
    assert results == {
        "test_hooked.py::test_leaky": {
            "nodeid": "test_hooked.py::test_leaky",
            "leaked": 1,
            "failed": True,
        },
        "test_hooked.py::test_clean": {
            "nodeid": "test_hooked.py::test_clean",
            "leaked": 0,
            "failed": False,
        },
    }
    # Once, where the results come together; skipped tests were not checked.
    assert _read(seen, "sessionfinish") == [
        [["test_hooked.py::test_clean", 0], ["test_hooked.py::test_leaky", 1]]
    ]
    servers = _read(seen, "server")
    assert servers, "pytest_dbleak_server was never called"
    assert {s["backend"] for s in servers} == {"process"}  # type: ignore[index]


def test_without_dbleak_the_hooks_are_quiet_and_a_conftest_implementing_them_still_loads(
    project: pytest.Pytester,
) -> None:
    result = project.runpytest_subprocess("-p", "no:dbleak", "-p", "no:cacheprovider")
    assert "dbleak_mysql_url" in result.stdout.str()  # fixture not found: the plugin is off
    assert not (project.path / "seen" / "sessionfinish").exists()
