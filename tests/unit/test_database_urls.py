"""The session database as each driver spells it: URLs and connect() keywords."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from pytest_dbleak.engine.database import DRIVERS, Database
from pytest_dbleak.engine.errors import DbleakError

DB = Database("dbleak_main_1", "dbleak_main_1", "s3cret-pw", "127.0.0.1", 40123)
REMOTE = Database("d", "u", "p", "db.example", 3306, local=False)


@pytest.mark.parametrize(
    ("driver", "drivername", "query"),
    [
        ("pymysql", "mysql+pymysql", {"charset": "utf8mb4", "ssl_disabled": "true"}),
        ("aiomysql", "mysql+aiomysql", {"charset": "utf8mb4"}),
        ("asyncmy", "mysql+asyncmy", {"charset": "utf8mb4"}),
        ("mysqldb", "mysql+mysqldb", {"charset": "utf8mb4", "ssl_mode": "DISABLED"}),
        ("mysqlconnector", "mysql+mysqlconnector", {"charset": "utf8mb4", "ssl_disabled": "true"}),
        ("mariadbconnector", "mariadb+mariadbconnector", {"ssl": "false"}),
    ],
)
def test_each_driver_gets_its_own_spelling_of_no_tls(
    driver: str, drivername: str, query: dict[str, str]
) -> None:
    url = make_url(DB.url(driver))
    assert url.drivername == drivername
    assert dict(url.query) == query
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "dbleak_main_1",
        "s3cret-pw",
        "127.0.0.1",
        40123,
        "dbleak_main_1",
    )


def test_the_default_url_is_pymysql_as_dbleak_mysql_url_is() -> None:
    assert make_url(DB.url()).drivername == "mysql+pymysql"


def test_connect_kwargs_name_the_database_as_the_driver_does() -> None:
    assert DB.connect_kwargs("aiomysql")["db"] == "dbleak_main_1"
    assert DB.connect_kwargs("mysqldb") == {
        "host": "127.0.0.1",
        "port": 40123,
        "user": "dbleak_main_1",
        "password": "s3cret-pw",
        "database": "dbleak_main_1",
        "charset": "utf8mb4",
        "ssl_mode": "DISABLED",
    }
    assert DB.connect_kwargs("mysqlconnector")["ssl_disabled"] is True


def test_a_remote_server_keeps_the_driver_default_tls() -> None:
    for driver in DRIVERS:
        assert not {"ssl_disabled", "ssl_mode", "ssl"} & set(REMOTE.connect_kwargs(driver))
        assert not {"ssl_disabled", "ssl_mode", "ssl"} & set(make_url(REMOTE.url(driver)).query)


def test_aliases_and_sqlalchemy_drivernames_are_accepted() -> None:
    assert DB.url("mysqlclient") == DB.url("mysql+mysqldb") == DB.url("mysqldb")
    assert DB.url("mariadb") == DB.url("mariadbconnector")


def test_an_unknown_driver_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(DbleakError, match=r"unknown driver 'oracle'; one of: pymysql, "):
        DB.url("oracle")


def test_the_password_stays_out_of_the_repr() -> None:
    assert "s3cret-pw" not in repr(DB)


PG = Database(
    "dbleak_main_1", "dbleak_main_1", "s3cret-pw", "127.0.0.1", 40124, family="postgresql"
)


@pytest.mark.parametrize(
    ("driver", "drivername", "query"),
    [
        ("psycopg", "postgresql+psycopg", {"sslmode": "disable"}),
        ("psycopg2", "postgresql+psycopg2", {"sslmode": "disable"}),
        ("asyncpg", "postgresql+asyncpg", {"ssl": "disable"}),
        ("pg8000", "postgresql+pg8000", {}),
    ],
)
def test_each_postgresql_driver_gets_its_own_url(
    driver: str, drivername: str, query: dict[str, str]
) -> None:
    url = make_url(PG.url(driver))
    assert url.drivername == drivername
    assert dict(url.query) == query
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "dbleak_main_1",
        "s3cret-pw",
        "127.0.0.1",
        40124,
        "dbleak_main_1",
    )


def test_a_postgresql_database_defaults_to_psycopg_and_refuses_a_mysql_driver() -> None:
    assert make_url(PG.url()).drivername == "postgresql+psycopg"
    assert PG.connect_kwargs()["dbname"] == "dbleak_main_1"
    assert "charset" not in PG.connect_kwargs()
    with pytest.raises(DbleakError, match=r"unknown driver 'pymysql'; one of: psycopg, "):
        PG.url("pymysql")
    with pytest.raises(DbleakError, match=r"\(the MySQL drivers\)"):
        DB.url("psycopg")


def test_postgresql_connect_kwargs_are_each_drivers_own() -> None:
    assert PG.connect_kwargs("asyncpg") == {
        "host": "127.0.0.1",
        "port": 40124,
        "user": "dbleak_main_1",
        "password": "s3cret-pw",
        "database": "dbleak_main_1",
        "ssl": "disable",
    }
    assert PG.connect_kwargs("pg8000")["database"] == "dbleak_main_1"
    assert PG.connect_kwargs("psycopg2")["sslmode"] == "disable"
    remote = Database("d", "u", "p", "db.example", 5432, local=False, family="postgresql")
    assert "sslmode" not in remote.connect_kwargs()
    assert dict(make_url(remote.url("postgresql+asyncpg")).query) == {}
