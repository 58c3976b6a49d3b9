"""Option declarations and their resolution: CLI > environment > ini file > default.

Every setting is declared once in ``OPTIONS``; the same help text serves ``addoption``
and ``addini``, and CLI options default to ``None`` so that "not given" can fall
through to the environment, then the ini file, then the built-in default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.errors import DbleakError, nearest

BACKENDS = ("auto", "process", "docker", "url")
FAMILIES = ("auto", "mysql", "postgresql")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _seconds(*, positive: bool) -> Callable[[str], float]:
    """A parser of a number of seconds: >= 0, or > 0 when zero makes no sense."""
    valid = f"a number of seconds {'>' if positive else '>='} 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        # Also refuses NaN and infinity: a wait must end.
        if not 0 <= value < float("inf") or (positive and value == 0):
            raise ValueError(f"expected {valid}, got {text!r}")
        return value

    return parse


def _whole_number(*, minimum: int) -> Callable[[str], int]:
    valid = f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ValueError(f"expected {valid}, got {text!r}")
        return value

    return parse


_parse_settle = _seconds(positive=False)  # 0: judge at the first look
_parse_startup = _seconds(positive=True)  # 0: no server could ever be ready
_parse_allow = _whole_number(minimum=0)
_parse_lock_wait = _seconds(positive=False)  # 0: never interrupt a statement


def _parse_backend(text: str) -> str:
    value = text.strip().lower()
    if value not in BACKENDS:
        close = nearest(value, BACKENDS, cutoff=0.6)
        guess = f"did you mean {close!r}? " if close else ""
        raise ValueError(f"unknown backend {text!r}; {guess}choose one of {', '.join(BACKENDS)}")
    return value


def _parse_family(text: str) -> str:
    value = text.strip().lower()
    value = {"postgres": "postgresql", "mariadb": "mysql"}.get(value, value)
    if value not in FAMILIES:
        close = nearest(value, FAMILIES, cutoff=0.6)
        guess = f"did you mean {close!r}? " if close else ""
        raise ValueError(
            f"unknown server family {text!r}; {guess}choose one of {', '.join(FAMILIES)}"
        )
    return value


def _parse_str(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class OptionSpec:
    """One setting: its name in every place it can be given, and how to parse it."""

    name: str
    help: str
    parse: Callable[[str], Any]
    default: Any
    flag: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return f"dbleak_{self.name}" if self.name != "enabled" else "dbleak"

    @property
    def ini(self) -> str:
        return f"dbleak_{self.name}"

    @property
    def env(self) -> str:
        return f"DBLEAK_{self.name.upper()}"

    @property
    def cli_help(self) -> str:
        """The help `pytest --help` shows: the other two places it can be set, too."""
        return f"{self.help} [env {self.env}, ini {self.ini}]"

    @property
    def is_flag(self) -> bool:
        return self.parse is _parse_bool

    @property
    def negative(self) -> str:
        """`--no-dbleak`: a flag's way to switch off from the command line what an ini file
        or the environment switched on (flags only)."""
        return "--no-" + self.flag.removeprefix("--")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "enabled",
        "fail every test that leaks a database connection.",
        _parse_bool,
        False,
        "--dbleak",
    ),
    OptionSpec(
        "backend",
        "where the session's server comes from: auto, process, docker or url (default: auto).",
        _parse_backend,
        "auto",
        "--dbleak-backend",
        "NAME",
    ),
    OptionSpec(
        "family",
        "which server the session checks: mysql, postgresql, or auto - the family whose "
        "fixtures the collected tests request, MySQL when they request none (default: auto).",
        _parse_family,
        "auto",
        "--dbleak-family",
        "NAME",
    ),
    OptionSpec(
        "mysql_url",
        "an existing server for the url backend, e.g. "
        "mysql://root:pw@127.0.0.1:3306 (the plugin creates and drops its own database "
        "and user there).",
        _parse_str,
        None,
        "--dbleak-mysql-url",
        "URL",
    ),
    OptionSpec(
        "mysqld",
        "the mariadbd/mysqld server binary for the process backend (default: the first "
        "found on PATH, then in /usr/sbin, /usr/local/sbin, /usr/local/mysql/bin, "
        "/opt/mysql/bin).",
        _parse_str,
        None,
        "--dbleak-mysqld",
        "PATH",
    ),
    OptionSpec(
        "image",
        "the container image for the docker backend (default: mysql:8.4).",
        _parse_str,
        "mysql:8.4",
        "--dbleak-image",
        "IMAGE",
    ),
    OptionSpec(
        "postgres",
        "the postgres server binary for PostgreSQL's process backend (default: the first "
        "found on PATH, then in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, "
        "/usr/local/pgsql/bin).",
        _parse_str,
        None,
        "--dbleak-postgres",
        "PATH",
    ),
    OptionSpec(
        "postgresql_url",
        "an existing PostgreSQL server for the url backend, e.g. "
        "postgresql://postgres:pw@127.0.0.1:5432/postgres (the plugin creates and drops its "
        "own database and role there).",
        _parse_str,
        None,
        "--dbleak-postgresql-url",
        "URL",
    ),
    OptionSpec(
        "postgresql_image",
        "the container image for PostgreSQL's docker backend (default: postgres:17).",
        _parse_str,
        "postgres:17",
        "--dbleak-postgresql-image",
        "IMAGE",
    ),
    OptionSpec(
        "settle_timeout",
        "seconds to re-check a suspected leak before declaring it "
        "(default: 1.0); a clean test never waits.",
        _parse_settle,
        1.0,
        "--dbleak-settle-timeout",
        "SECONDS",
    ),
    OptionSpec(
        "allow",
        "connections a test may leak before it fails (default: 0).",
        _parse_allow,
        0,
        "--dbleak-allow",
        "N",
    ),
    OptionSpec(
        "report",
        "write a JSON report of every test's leak check to PATH.",
        _parse_str,
        None,
        "--dbleak-report",
        "PATH",
    ),
    OptionSpec(
        "html",
        "write a self-contained HTML report (timeline of connections) to PATH.",
        _parse_str,
        None,
        "--dbleak-html",
        "PATH",
    ),
    OptionSpec(
        "baseline",
        "record leaks to PATH, or, if PATH exists, fail only on leaks that "
        "are new or larger than recorded.",
        _parse_str,
        None,
        "--dbleak-baseline",
        "PATH",
    ),
    OptionSpec(
        "report_only",
        "report leaks without failing tests (for adopting the gate).",
        _parse_bool,
        False,
        "--dbleak-report-only",
    ),
    OptionSpec(
        "reclaim",
        "take back what a failing test leaked once it is reported, so later "
        "tests start from a healthy pool and server (default: on).",
        _parse_bool,
        True,
        "--dbleak-reclaim",
    ),
    OptionSpec(
        "lock_wait",
        "seconds a statement may wait on a lock while a connection sits "
        "idle in a transaction before it is interrupted and its test failed (default: "
        "5; 0: never).",
        _parse_lock_wait,
        5.0,
        "--dbleak-lock-wait",
        "SECONDS",
    ),
    OptionSpec(
        "cache_dir",
        "where the process backend keeps its initialised template datadir "
        "(default: $XDG_CACHE_HOME/pytest-dbleak).",
        _parse_str,
        None,
        "--dbleak-cache-dir",
        "DIR",
    ),
    OptionSpec(
        "reuse",
        "keep the process backend's server running after the session, and use the "
        "one a previous session left (same binary, cache folder and OS user); each session "
        "still gets its own database and user. `python -m pytest_dbleak stop` stops it.",
        _parse_bool,
        False,
        "--dbleak-reuse",
    ),
    OptionSpec(
        "reuse_idle",
        "seconds a reused server stays up with no session before it stops itself (default: 900).",
        _parse_startup,
        900.0,
        "--dbleak-reuse-idle",
        "SECONDS",
    ),
    OptionSpec(
        "startup_timeout",
        "seconds to wait for the server to accept a login (default: 30).",
        _parse_startup,
        30.0,
        "--dbleak-startup-timeout",
        "SECONDS",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one run."""

    enabled: bool = False
    backend: str = "auto"
    family: str = "auto"
    mysql_url: str | None = None
    mysqld: str | None = None
    image: str = "mysql:8.4"
    postgres: str | None = None
    postgresql_url: str | None = None
    postgresql_image: str = "postgres:17"
    settle_timeout: float = 1.0
    allow: int = 0
    report: str | None = None
    html: str | None = None
    baseline: str | None = None
    report_only: bool = False
    reclaim: bool = True
    lock_wait: float = 5.0
    cache_dir: str | None = None
    reuse: bool = False
    reuse_idle: float = 900.0
    startup_timeout: float = 30.0

    @property
    def template_cache(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "pytest-dbleak"


assert {f.name for f in fields(Settings)} == {o.name for o in OPTIONS}


def resolve(cli: Mapping[str, Any], env: Mapping[str, str], ini: Mapping[str, Any]) -> Settings:
    """Resolve each option from the first source that sets it.

    ``cli`` maps option dests to parsed values (None when not given), ``ini`` maps ini
    keys to raw values ("" or None when not set). Raises DbleakError naming the source of
    a bad value.
    """
    values: dict[str, Any] = {}
    for spec in OPTIONS:
        value = cli.get(spec.dest)
        if value is not None:
            values[spec.name] = _parse(spec, value, spec.flag)
            continue
        raw_env = env.get(spec.env)
        if raw_env is not None and raw_env != "":
            values[spec.name] = _parse(spec, raw_env, f"environment variable {spec.env}")
            continue
        raw_ini = ini.get(spec.ini)
        if raw_ini is not None and raw_ini != "":
            values[spec.name] = _parse(spec, raw_ini, f"ini option {spec.ini}")
            continue
        values[spec.name] = spec.default
    return Settings(**values)


def _parse(spec: OptionSpec, value: Any, source: str) -> Any:
    if isinstance(value, bool) or (not isinstance(value, str) and spec.parse is not _parse_str):
        value = str(value)
    try:
        return spec.parse(value)
    except ValueError as exc:
        raise DbleakError(f"{source}: {exc}") from None
