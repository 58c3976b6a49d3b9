"""A pytest-django project with MySQL aliases and no dbleak code: ``pytest --dbleak`` alone.

The project (settings, an app with a model and its migration, a view for the live server,
tests) is written here; its settings point at a server that does not exist, so every
verdict below comes from a run the plugin redirected. Each ORM thread leak fails its test
at the user's line, naming the thread; every clean twin passes, and so do the tests that
live with Django's own connections: transactional tests, reads after them, several
aliases, ``live_server``, async ORM calls. The same verdicts in the full run, alone, with
``-n 2``, with ``--reuse-db``, with each ``CONN_MAX_AGE`` and with PyMySQL installed as
MySQLdb; nothing is left on a url backend's server afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_dbleak.families.mysql.family import parse_mysql_url
from tests.acceptance.helpers import FAST, line_of, only_dbleak_and, run_pytest_in

pytest.importorskip("pytest_django", reason="the django extra is not installed")
pytest.importorskip("MySQLdb", reason="mysqlclient (the drivers extra) is not installed")

SETTINGS = """\
import os

if os.environ.get("DJANGO_DRIVER") == "pymysql":
    import pymysql

    pymysql.install_as_MySQLdb()

MAX_AGE = os.environ.get("MAX_AGE", "0")
SECRET_KEY = "not a secret"
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "project.urls"
STATIC_URL = "/static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Nothing answers here: only the session's server can make these tests pass.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "shop",
        "HOST": "db.invalid",
        "USER": "shop",
        "PASSWORD": "not-this-one",
        "CONN_MAX_AGE": None if MAX_AGE == "none" else int(MAX_AGE),
        "OPTIONS": {"charset": "utf8mb4"},
    },
    "reports": {"ENGINE": "django.db.backends.mysql", "NAME": "reports", "HOST": "db.invalid"},
    "side": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
"""

URLS = """\
from django.http import HttpResponse
from django.urls import path

from shop.models import Item


def count(request):
    return HttpResponse(str(Item.objects.count()))


urlpatterns = [path("count/", count)]
"""

MODELS = """\
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
"""

MIGRATION = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", models.AutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=50)),
            ],
        ),
    ]
"""

TESTS = '''\
import os
import pathlib
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError, close_old_connections, connection, connections

from shop.models import Item


@pytest.fixture(scope="session")
def orm_worker():
    """A background worker of the whole session: its connection is its own, reused."""
    import queue
    from concurrent.futures import Future

    jobs = queue.Queue()

    def serve():
        while (job := jobs.get()) is not None:
            fn, future = job
            future.set_result(fn())
        connection.close()

    thread = threading.Thread(target=serve, name="session-worker")
    thread.start()

    def submit(fn):
        future = Future()
        jobs.put((fn, future))
        return future.result(timeout=10)

    yield submit
    jobs.put(None)
    thread.join()


def run(fn, name):
    thread = threading.Thread(target=fn, name=name)
    thread.start()
    thread.join()


@pytest.mark.django_db
def test_leaky_thread():
    run(lambda: Item.objects.count(), "orm-worker")  # LEAK-thread


@pytest.mark.django_db
def test_clean_thread():
    def work():
        Item.objects.count()
        connection.close()

    run(work, "orm-worker")


@pytest.mark.django_db
def test_clean_thread_close_old_connections():
    def work():
        Item.objects.count()
        close_old_connections()  # closes it only past CONN_MAX_AGE: 0 in the full run

    run(work, "orm-worker")


def count_items():
    return Item.objects.count()  # LEAK-executor


@pytest.mark.django_db
def test_leaky_executor():
    with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
        assert pool.submit(count_items).result() == 0


@pytest.mark.django_db
def test_clean_executor():
    def work():
        try:
            return Item.objects.count()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
        assert pool.submit(work).result() == 0


def poll(stop, polled):
    while not stop.wait(0.02):
        try:
            Item.objects.count()  # LEAK-poller
        except OperationalError:  # its connection was taken back after the verdict
            return
        polled.set()
    connection.close()


@pytest.mark.django_db
def test_leaky_poller_outlives_its_test():
    # Still querying once the test is over, when pytest-django blocks the database again.
    polled = threading.Event()
    stop = threading.Event()
    threading.Thread(target=poll, args=(stop, polled), name="poller", daemon=True).start()
    assert polled.wait(10)


@pytest.mark.django_db
def test_clean_poller_stopped():
    polled = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=poll, args=(stop, polled), name="poller")
    thread.start()
    assert polled.wait(10)
    stop.set()
    thread.join()


@pytest.mark.django_db(transaction=True)
def test_clean_transactional_write():
    Item.objects.create(name="a")
    assert Item.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_clean_read_between_transactional():
    # The main thread's connection was closed by the previous test: reopened here.
    assert Item.objects.count() == 0


def test_clean_read_after_transactional(django_db_setup, django_db_blocker):
    # pytest-django runs this after every transactional test: it reopens the main
    # thread's connection and, as a TestCase does, leaves it open for the next one.
    with django_db_blocker.unblock():
        assert Item.objects.count() == 0


def test_clean_read_again(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        assert not Item.objects.filter(name="a").exists()


@pytest.mark.django_db(transaction=True, databases=["default", "reports", "side"])
def test_clean_every_alias():
    Item.objects.using("reports").create(name="b")
    Item.objects.using("side").create(name="c")
    assert Item.objects.using("reports").count() == 1
    assert Item.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_clean_live_server(live_server):
    Item.objects.create(name="x")
    with urllib.request.urlopen(live_server.url + "/count/") as response:
        assert response.read() == b"1"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_clean_async_orm():
    # Django runs it in asgiref's one thread for sync code, which keeps the connection.
    await Item.objects.acreate(name="d")
    assert await Item.objects.acount() == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_clean_async_orm_again():
    assert await Item.objects.acount() == 0


@pytest.mark.django_db(transaction=True)
def test_clean_session_worker_keeps_its_connection(orm_worker):
    assert orm_worker(lambda: Item.objects.count()) == 0


@pytest.mark.django_db
def test_clean_names_its_databases():
    """What the outer test checks on the server afterwards: the names and the grants."""
    out = pathlib.Path(os.environ["NAMES_DIR"])
    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SHOW GRANTS")
        grants = [row[0] for row in cursor.fetchall()]
    (out / name).write_text("\\n".join(grants))
'''

# A project that names its test databases itself, as pytest-django's docs show.
RENAMED_CONFTEST = """\
import pytest
from django.conf import settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    settings.DATABASES["default"]["TEST"]["NAME"] = "test_custom"
"""

RENAMED_TESTS = """\
import os
import pathlib

import pytest
from django.db import connection

from shop.models import Item


@pytest.mark.django_db
def test_clean_on_a_renamed_test_database():
    Item.objects.create(name="r")
    assert Item.objects.count() == 1
    pathlib.Path(os.environ["NAMES_DIR"], connection.settings_dict["NAME"]).write_text("")
"""

LEAKS = {
    "test_leaky_thread": ("LEAK-thread", "orm-worker"),
    "test_leaky_executor": ("LEAK-executor", "pool_0"),
    "test_leaky_poller_outlives_its_test": ("LEAK-poller", "poller"),
}
CLEAN = (
    "test_clean_thread",
    "test_clean_thread_close_old_connections",
    "test_clean_executor",
    "test_clean_poller_stopped",
    "test_clean_transactional_write",
    "test_clean_read_between_transactional",
    "test_clean_read_after_transactional",
    "test_clean_read_again",
    "test_clean_every_alias",
    "test_clean_live_server",
    "test_clean_async_orm",
    "test_clean_async_orm_again",
    "test_clean_session_worker_keeps_its_connection",
    "test_clean_names_its_databases",
)
PLUGINS = only_dbleak_and("django", "xdist", "asyncio")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("django_project")
    (root / "project").mkdir()
    (root / "project" / "__init__.py").write_text("")
    (root / "project" / "settings.py").write_text(SETTINGS)
    (root / "project" / "urls.py").write_text(URLS)
    (root / "shop" / "migrations").mkdir(parents=True)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "models.py").write_text(MODELS)
    (root / "shop" / "migrations" / "__init__.py").write_text("")
    (root / "shop" / "migrations" / "0001_initial.py").write_text(MIGRATION)
    (root / "tests").mkdir()
    (root / "tests" / "test_orm.py").write_text(TESTS)
    (root / "renamed").mkdir()
    (root / "renamed" / "conftest.py").write_text(RENAMED_CONFTEST)
    (root / "renamed" / "test_renamed.py").write_text(RENAMED_TESTS)
    (root / "pytest.ini").write_text(
        "[pytest]\nDJANGO_SETTINGS_MODULE = project.settings\npythonpath = .\ntestpaths = tests\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    return root


def _run(project: Path, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> Run:
    names = project / "names"
    names.mkdir(exist_ok=True)
    for old in names.iterdir():
        old.unlink()
    monkeypatch.setenv("NAMES_DIR", str(names))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_pytest_in(project, "--dbleak", FAST, "-rA", *PLUGINS, *args)
    return Run(result, {p.name: p.read_text().splitlines() for p in names.iterdir()})


class Run:
    def __init__(self, result: pytest.RunResult, names: dict[str, list[str]]) -> None:
        self.result = result
        self.names = names  # test database -> the grants its user holds
        self.output = result.stdout.str() + "\n" + result.stderr.str()
        self.verdicts = {
            m[2]: m[1]
            for m in re.finditer(
                r"^(PASSED|FAILED|ERROR) tests/test_orm\.py::(\w+)", self.output, re.M
            )
        }

    def assert_verdicts(self, tests: tuple[str, ...] | None = None) -> None:
        wanted = {n: "FAILED" for n in LEAKS} | dict.fromkeys(CLEAN, "PASSED")
        if tests is not None:
            wanted = {n: v for n, v in wanted.items() if n in tests}
        assert self.verdicts == wanted, self.output
        for name in wanted.keys() & LEAKS.keys():
            marker, thread = LEAKS[name]
            line = line_of(TESTS, f"# {marker}")
            summary = (
                f"{name}: 1 connection leaked (1 server_connection) at tests/test_orm.py:{line}"
            )
            assert summary in self.output, self.output
            assert f"in thread {thread}" in self.output, self.output
        # No thread died of pytest-django's blocker while the run lasted (a poller still
        # going when the interpreter exits is outside it: stderr).
        assert "Database access not allowed" not in self.result.stdout.str(), self.output


def _session_databases(admin_url: str, names: dict[str, list[str]]) -> list[str]:
    """Databases left on the server by the sessions whose test databases are `names`."""
    prefixes = {re.sub(r"_default(_gw\d+)?$", "", name) for name in names}
    assert prefixes, names
    assert all(p.startswith("dbleak_") for p in prefixes), names
    conn = parse_mysql_url(admin_url).connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            schemas = [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()
    return [s for s in schemas if any(s.startswith(p) for p in prefixes)]


# -- the verdicts ---------------------------------------------------------------------
def test_the_full_run_fails_each_thread_leak_at_its_orm_line_and_passes_every_clean_test(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(project, monkeypatch)
    run.assert_verdicts()
    header = [line for line in run.result.stdout.lines if line.startswith("dbleak: Django:")]
    assert len(header) == 1, run.output
    assert re.fullmatch(
        r"dbleak: Django: 'default', 'reports' \(MySQL\) -> the session database "
        r"(dbleak_main_[0-9a-f]{6}) on [\d.]+:\d+, test databases \1_\*; "
        r"'side' \(sqlite3\) left alone",
        header[0],
    ), header
    assert "not-this-one" not in run.output


@pytest.mark.parametrize(
    "tests",
    [
        *((name,) for name in LEAKS),
        # Only a django_db test makes pytest-django create the test databases.
        ("test_clean_transactional_write", "test_clean_read_after_transactional"),
    ],
    ids=lambda tests: tests[-1],
)
def test_each_verdict_is_the_same_alone(
    project: Path, monkeypatch: pytest.MonkeyPatch, tests: tuple[str, ...]
) -> None:
    run = _run(project, monkeypatch, *(f"tests/test_orm.py::{name}" for name in tests))
    run.assert_verdicts(tests)


def test_the_verdicts_are_the_same_with_two_xdist_workers(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(project, monkeypatch, "-n", "2")
    run.assert_verdicts()
    assert {re.sub(r"^dbleak_(gw\d)_.*_(gw\d)$", r"\1 \2", n) for n in run.names} <= {
        "gw0 gw0",
        "gw1 gw1",
    }, run.names  # pytest-django's own per-worker suffix, on each worker's own database


@pytest.mark.parametrize("max_age", ["60", "none"])
def test_conn_max_age_changes_no_verdict(
    project: Path, monkeypatch: pytest.MonkeyPatch, max_age: str
) -> None:
    # close_old_connections() keeps a connection younger than CONN_MAX_AGE open: a leak
    # then, as Django documents; every other verdict stays.
    run = _run(project, monkeypatch, "-k", "not close_old_connections", MAX_AGE=max_age)
    run.assert_verdicts(tuple(n for n in (*LEAKS, *CLEAN) if "close_old" not in n))


def test_pymysql_installed_as_mysqldb_gives_the_same_verdicts(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(project, monkeypatch, DJANGO_DRIVER="pymysql").assert_verdicts()


# -- the server afterwards ------------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_reuse_db_on_a_url_backend_leaves_nothing_and_the_user_holds_only_its_own_names(
    project: Path, monkeypatch: pytest.MonkeyPatch, local_mysql_url: str, extra: tuple[str, ...]
) -> None:
    url = ("--dbleak-backend=url", f"--dbleak-mysql-url={local_mysql_url}")
    run = _run(project, monkeypatch, "--reuse-db", *url, *extra)
    run.assert_verdicts()
    assert run.names
    for test_database, grants in run.names.items():
        session = re.sub(r"_default(_gw\d+)?$", "", test_database)
        pattern = session.replace("_", "\\_") + "\\_%"
        assert {g.split(" TO ")[0] for g in grants} == {
            "GRANT USAGE ON *.*",
            f"GRANT ALL PRIVILEGES ON `{session}`.*",
            f"GRANT ALL PRIVILEGES ON `{pattern}`.*",
        }, grants
    assert _session_databases(local_mysql_url, run.names) == []


def test_the_sweep_removes_the_test_databases_of_a_killed_session(
    project: Path, monkeypatch: pytest.MonkeyPatch, local_mysql_url: str
) -> None:
    # What a url run killed after pytest-django created its test databases leaves behind.
    orphan = "dbleak_main_0dead0"
    conn = parse_mysql_url(local_mysql_url).connect()
    try:
        with conn.cursor() as cursor:
            for name in (orphan, f"{orphan}_default", f"{orphan}_reports"):
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
            cursor.execute(f"CREATE USER IF NOT EXISTS '{orphan}'@'%' IDENTIFIED BY 'x'")
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{orphan}`.* TO '{orphan}'@'%'")
            pattern = orphan.replace("_", "\\_") + "\\_%"
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{orphan}'@'%'")
    finally:
        conn.close()
    url = ("--dbleak-backend=url", f"--dbleak-mysql-url={local_mysql_url}")
    run = _run(project, monkeypatch, *url, "tests/test_orm.py::test_clean_thread")
    run.assert_verdicts(("test_clean_thread",))
    assert _session_databases(local_mysql_url, {f"{orphan}_default": []}) == []


def test_a_test_database_the_project_renames_keeps_the_sessions_prefix(
    project: Path, monkeypatch: pytest.MonkeyPatch, local_mysql_url: str
) -> None:
    url = ("--dbleak-backend=url", f"--dbleak-mysql-url={local_mysql_url}")
    run = _run(project, monkeypatch, *url, "renamed")
    assert run.result.ret == 0, run.output
    [name] = run.names
    assert re.fullmatch(r"dbleak_main_[0-9a-f]{6}_default_test_custom", name), name
    assert _session_databases(local_mysql_url, {name.replace("_test_custom", ""): []}) == []


def test_without_dbleak_django_is_left_alone(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_pytest_in(project, *PLUGINS, "tests/test_orm.py::test_clean_thread")
    assert "dbleak: Django" not in result.stdout.str()
    assert "db.invalid" in result.stdout.str()  # the project's own settings, untouched
    assert result.ret != 0
