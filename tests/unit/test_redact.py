"""Passwords never reach the terminal or a report: URL masking and known secrets."""

from __future__ import annotations

import pytest

from pytest_dbleak.engine.errors import DbleakError, Redactor, mask_url
from pytest_dbleak.families.mysql.family import (
    RunningServer,
    ServerInfo,
    connect_error,
    parse_mysql_url,
)
from pytest_dbleak.families.mysql.monitor import Endpoint


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql://root:hunter22@127.0.0.1:3306", "mysql://root:***@127.0.0.1:3306"),
        (
            "mysql+pymysql://u:p4ss:word@h/db?charset=utf8mb4",
            "mysql+pymysql://u:***@h/db?charset=utf8mb4",
        ),
        ("mariadb://:only-a-password@h", "mariadb://:***@h"),
        ("MYSQL://Admin:Secret@Host", "MYSQL://Admin:***@Host"),
    ],
)
def test_a_url_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "text",
    [
        "mysql://root@127.0.0.1:3306",
        "mysql://127.0.0.1:3306/db",
        "see host:3306 @ noon",
        "user@example.org",
    ],
)
def test_text_without_a_url_password_is_left_alone(text: str) -> None:
    assert mask_url(text) == text
    assert Redactor()(text) == text


def test_every_url_in_a_message_is_masked() -> None:
    text = "from mysql://a:one@h1 to mysql+pymysql://b:two@h2/db failed"
    assert Redactor()(text) == "from mysql://a:***@h1 to mysql+pymysql://b:***@h2/db failed"


def test_known_secrets_are_masked_wherever_they_appear() -> None:
    redact = Redactor()
    redact.add("0123456789abcdef")
    redact.add(None)
    redact.add("")
    assert redact("password 0123456789abcdef, again:0123456789abcdef") == (
        "password ***, again:***"
    )


def test_a_longer_secret_is_masked_before_a_shorter_one_inside_it() -> None:
    redact = Redactor()
    redact.add("abcd")
    redact.add("abcdefgh")
    assert redact("x abcdefgh y abcd") == "x *** y ***"


def test_a_very_short_secret_is_not_masked_so_ordinary_words_survive() -> None:
    redact = Redactor()
    redact.add("the")
    assert redact("the server") == "the server"


def test_server_info_repr_hides_the_admin_url() -> None:
    info = ServerInfo(
        "url",
        "127.0.0.1",
        3306,
        None,
        "10.11.19-MariaDB",
        admin_url="mysql+pymysql://root:topsecret99@127.0.0.1:3306",
    )
    assert "topsecret99" not in repr(info)
    assert "admin_url" not in repr(info)
    assert repr(info) == (
        "ServerInfo(backend='url', host='127.0.0.1', port=3306, "
        "socket=None, version='10.11.19-MariaDB')"
    )
    assert info.is_mariadb


def test_a_refused_login_names_host_and_port_but_not_the_password() -> None:
    server = RunningServer("url", Endpoint("db.example", 3307, "root", "topsecret99"), owned=False)
    message = str(connect_error(server, Exception(1045, "Access denied for user 'root'")))
    assert message == (
        "MySQL server at db.example:3307 refused the login (wrong user or password) [url backend]"
    )
    unreachable = str(connect_error(server, Exception(2003, "Can't connect")))
    assert unreachable == "MySQL server at db.example:3307 cannot be reached [url backend]"


def test_a_url_of_another_database_is_refused_without_echoing_it() -> None:
    with pytest.raises(DbleakError) as error:
        parse_mysql_url("postgresql://u:topsecret99@h/db")
    assert "topsecret99" not in str(error.value)
    assert str(error.value).endswith("got postgresql://")


def test_a_mysql_url_becomes_an_admin_endpoint() -> None:
    endpoint = parse_mysql_url("mysql://admin:pw@db.example:3307")
    assert endpoint == Endpoint("db.example", 3307, "admin", "pw")
    assert parse_mysql_url("mariadb://h").port == 3306
    assert parse_mysql_url("mysql://root@localhost").is_local


def test_a_missing_module_of_an_extra_names_the_extra_and_the_top_level_module() -> None:
    from pytest_dbleak.engine.errors import missing_extra

    exc = ModuleNotFoundError("No module named 'werkzeug.serving'", name="werkzeug.serving")
    assert missing_extra(exc, "stress", "dbleak_http_load") == (
        "dbleak_http_load needs the stress extra: pip install 'pytest-dbleak[stress]' "
        "(no module named 'werkzeug')"
    )
    # Anything else stays the error it is.
    other = ModuleNotFoundError("No module named 'myapp'", name="myapp")
    assert missing_extra(other, "stress", "dbleak_http_load") is None
