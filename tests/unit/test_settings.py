"""Option parsing and precedence: CLI > environment > ini file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.settings import OPTIONS, Settings, resolve


def settings(cli=None, env=None, ini=None) -> Settings:
    return resolve(cli=cli or {}, env=env or {}, ini=ini or {})


def test_nothing_given_yields_the_documented_defaults() -> None:
    s = settings()
    assert s == Settings()
    assert (s.enabled, s.backend, s.settle_timeout, s.allow, s.report) == (
        False,
        "auto",
        1.0,
        0,
        None,
    )
    assert s.startup_timeout == 30.0
    assert s.image == "mysql:8.4"


def test_every_option_has_a_flag_an_ini_key_and_an_environment_variable() -> None:
    for spec in OPTIONS:
        assert spec.flag == "--" + (
            "dbleak" if spec.name == "enabled" else "dbleak-" + spec.name.replace("_", "-")
        )
        assert spec.ini == f"dbleak_{spec.name}"
        assert spec.env == f"DBLEAK_{spec.name.upper()}"


@pytest.mark.parametrize(
    ("cli", "env", "ini", "expected"),
    [
        pytest.param({}, {}, {}, 0, id="default"),
        pytest.param({}, {}, {"dbleak_allow": "3"}, 3, id="ini"),
        pytest.param({}, {"DBLEAK_ALLOW": "2"}, {"dbleak_allow": "3"}, 2, id="env_over_ini"),
        pytest.param(
            {"dbleak_allow": "1"},
            {"DBLEAK_ALLOW": "2"},
            {"dbleak_allow": "3"},
            1,
            id="cli_over_env",
        ),
        pytest.param({"dbleak_allow": "0"}, {"DBLEAK_ALLOW": "2"}, {}, 0, id="cli_zero_still_wins"),
    ],
)
def test_each_setting_comes_from_the_first_source_that_sets_it(cli, env, ini, expected) -> None:
    assert settings(cli, env, ini).allow == expected


def test_an_empty_environment_variable_or_ini_value_falls_through() -> None:
    s = settings(
        env={"DBLEAK_ALLOW": "", "DBLEAK_REPORT": ""},
        ini={"dbleak_allow": "", "dbleak_report": None},
    )
    assert (s.allow, s.report) == (0, None)
    assert settings(env={"DBLEAK_ALLOW": ""}, ini={"dbleak_allow": "4"}).allow == 4


def test_a_cli_option_that_was_not_given_falls_through_to_the_environment() -> None:
    assert settings(cli={"dbleak_allow": None}, env={"DBLEAK_ALLOW": "2"}).allow == 2


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_spellings_switch_a_flag_on(text: str) -> None:
    assert settings(env={"DBLEAK_ENABLED": text}).enabled is True


@pytest.mark.parametrize("text", ["0", "false", "no", "off"])
def test_false_spellings_switch_a_flag_off(text: str) -> None:
    assert settings(env={"DBLEAK_ENABLED": text}, ini={"dbleak_enabled": "true"}).enabled is False


def test_the_cli_flag_is_a_boolean() -> None:
    assert settings(cli={"dbleak": True}).enabled is True
    assert settings(cli={"dbleak_report_only": True}).report_only is True


def test_values_are_parsed_to_their_types() -> None:
    s = settings(
        env={
            "DBLEAK_SETTLE_TIMEOUT": "0.25",
            "DBLEAK_BACKEND": " URL ",
            "DBLEAK_MYSQL_URL": " mysql://root@h:1 ",
            "DBLEAK_STARTUP_TIMEOUT": "0.5",
        }
    )
    assert s.settle_timeout == 0.25
    assert isinstance(s.settle_timeout, float)
    assert s.backend == "url"
    assert s.mysql_url == "mysql://root@h:1"
    assert s.startup_timeout == 0.5


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        (
            "cli",
            "bogus",
            "--dbleak-backend: unknown backend 'bogus'; choose one of auto, process, docker, url",
        ),
        ("env", "bogus", "environment variable DBLEAK_BACKEND: unknown backend 'bogus'"),
        ("ini", "bogus", "ini option dbleak_backend: unknown backend 'bogus'"),
    ],
)
def test_a_bad_value_names_the_source_that_gave_it(source: str, value: str, message: str) -> None:
    given = {
        "cli": ({"dbleak_backend": value}, {}, {}),
        "env": ({}, {"DBLEAK_BACKEND": value}, {}),
        "ini": ({}, {}, {"dbleak_backend": value}),
    }[source]
    with pytest.raises(DbleakError) as error:
        settings(*given)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("settle_timeout", "-1", "expected a number of seconds >= 0, got '-1'"),
        ("settle_timeout", "nan", "expected a number of seconds >= 0, got 'nan'"),
        ("settle_timeout", "soon", "expected a number of seconds >= 0, got 'soon'"),
        ("startup_timeout", "-0.5", "expected a number of seconds > 0, got '-0.5'"),
        ("startup_timeout", "0", "expected a number of seconds > 0, got '0'"),
        ("startup_timeout", "inf", "expected a number of seconds > 0, got 'inf'"),
        ("allow", "-1", "expected a whole number >= 0, got '-1'"),
        ("allow", "1.5", "expected a whole number >= 0, got '1.5'"),
        ("allow", "abc", "expected a whole number >= 0, got 'abc'"),
        ("enabled", "maybe", "expected true or false, got 'maybe'"),
    ],
)
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused_with_its_valid_range(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(DbleakError) as err:
        settings(env={f"DBLEAK_{name.upper()}": value})
    assert str(err.value) == f"environment variable DBLEAK_{name.upper()}: {message}"


def test_every_numeric_option_is_refused_the_same_way_from_the_command_line() -> None:
    for spec in OPTIONS:
        if (
            spec.default is not None
            and isinstance(spec.default, (int, float))
            and not (spec.is_flag)
        ):
            with pytest.raises(DbleakError) as err:
                settings(cli={spec.dest: "abc"})
            assert str(err.value).startswith(f"{spec.flag}: expected a ")
            assert str(err.value).endswith(", got 'abc'")


def test_a_cli_false_switches_the_check_off_over_the_environment_and_the_ini_file() -> None:
    # What --no-dbleak stores.
    assert (
        settings(
            cli={"dbleak": False}, env={"DBLEAK_ENABLED": "1"}, ini={"dbleak_enabled": "true"}
        ).enabled
        is False
    )
    flags = [spec for spec in OPTIONS if spec.is_flag]
    assert [spec.negative for spec in flags] == [
        "--no-dbleak",
        "--no-dbleak-report-only",
        "--no-dbleak-reclaim",
        "--no-dbleak-reuse",
    ]


def test_the_template_cache_follows_the_cache_dir_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(env={"DBLEAK_CACHE_DIR": "/tmp/x"}).template_cache == Path("/tmp/x")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    assert settings().template_cache == Path("/tmp/xdg/pytest-dbleak")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert settings().template_cache == Path("/home/someone/.cache/pytest-dbleak")


def test_zero_is_a_valid_settle_timeout() -> None:
    assert settings(cli={"dbleak_settle_timeout": "0"}).settle_timeout == 0.0


@pytest.mark.parametrize("value", ["inf", "Infinity"])
def test_an_infinite_settle_timeout_is_refused(value: str) -> None:
    with pytest.raises(DbleakError, match="expected a number of seconds >= 0"):
        settings(cli={"dbleak_settle_timeout": value})


def test_reuse_is_off_by_default_and_set_from_the_cli_env_or_ini() -> None:
    assert settings().reuse is False
    assert settings(env={"DBLEAK_REUSE": "1"}).reuse is True
    assert settings(ini={"dbleak_reuse": "true"}).reuse is True
    assert settings(cli={"dbleak_reuse": False}, env={"DBLEAK_REUSE": "1"}).reuse is False
    assert settings(env={"DBLEAK_REUSE_IDLE": "30"}).reuse_idle == 30.0
    with pytest.raises(DbleakError, match="DBLEAK_REUSE_IDLE"):
        settings(env={"DBLEAK_REUSE_IDLE": "0"})


def test_the_postgresql_options_come_from_each_source_like_the_mysql_ones() -> None:
    assert (Settings().postgres, Settings().postgresql_url, Settings().postgresql_image) == (
        None,
        None,
        "postgres:17",
    )
    flags = {spec.name: spec.flag for spec in OPTIONS}
    assert (flags["postgres"], flags["postgresql_url"], flags["postgresql_image"]) == (
        "--dbleak-postgres",
        "--dbleak-postgresql-url",
        "--dbleak-postgresql-image",
    )
    s = settings(
        cli={"dbleak_postgresql_url": " postgresql://u:p@h:5432/db "},
        env={"DBLEAK_POSTGRES": "/opt/pg/bin/postgres", "DBLEAK_POSTGRESQL_IMAGE": "postgres:16"},
        ini={"dbleak_postgres": "/ini/postgres", "dbleak_postgresql_image": "postgres:15"},
    )
    assert (s.postgresql_url, s.postgres, s.postgresql_image) == (
        "postgresql://u:p@h:5432/db",
        "/opt/pg/bin/postgres",
        "postgres:16",
    )
    assert settings(ini={"dbleak_postgresql_image": "postgres:15"}).postgresql_image == (
        "postgres:15"
    )
