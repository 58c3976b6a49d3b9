"""Marker signatures: each marker's args are validated by calling its function.

As pytest-django does for ``django_db``: calling the signature with the marker's
``*args, **kwargs`` turns a typo into a TypeError that names the keyword.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_dbleak.engine.errors import DbleakError, nearest


@dataclass(frozen=True)
class LeakMark:
    allow: int | None = None
    settle: float | None = None


@dataclass(frozen=True)
class JobsMark:
    runs: int = 100
    threads: int = 4


@dataclass(frozen=True)
class SocketChurnMark:
    clients: int = 100
    concurrency: int = 10
    timeout: float = 30.0


@dataclass(frozen=True)
class HttpLoadMark:
    requests: int = 1000
    concurrency: int = 50
    timeout: float = 30.0


def _count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DbleakError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def _seconds(name: str, value: Any, *, positive: bool = False) -> float:
    bad = (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")  # also NaN: a re-check must end
    )
    if bad or (positive and value == 0):
        sign = "> 0" if positive else ">= 0"
        raise DbleakError(f"{name} must be a number of seconds {sign}, got {value!r}")
    return float(value)


def dbleak(*, allow: int | None = None, settle: float | None = None) -> LeakMark:
    """Tune the leak check: tolerate `allow` leaked connections; re-check for `settle` s."""
    return LeakMark(
        allow=None if allow is None else _count("allow", allow, minimum=0),
        settle=None if settle is None else _seconds("settle", settle),
    )


def no_dbleak() -> None:
    """Skip the leak check for this test."""


def dbleak_jobs(*, runs: int = 100, threads: int = 4) -> JobsMark:
    """Run callables `runs` times on `threads` worker threads (fixture dbleak_jobs)."""
    return JobsMark(_count("runs", runs, minimum=1), _count("threads", threads, minimum=1))


def dbleak_socket_churn(
    *, clients: int = 100, concurrency: int = 10, timeout: float = 30.0
) -> SocketChurnMark:
    """Connect and disconnect `clients` Socket.IO clients, `concurrency` at a time; wait
    up to `timeout` s for disconnect handlers and their tasks (fixture dbleak_socket_churn)."""
    return SocketChurnMark(
        _count("clients", clients, minimum=1),
        _count("concurrency", concurrency, minimum=1),
        _seconds("timeout", timeout, positive=True),
    )


def dbleak_http_load(
    *, requests: int = 1000, concurrency: int = 50, timeout: float = 30.0
) -> HttpLoadMark:
    """Send `requests` HTTP requests, `concurrency` at a time, each with a `timeout` s
    socket timeout (fixture dbleak_http_load)."""
    return HttpLoadMark(
        _count("requests", requests, minimum=1),
        _count("concurrency", concurrency, minimum=1),
        _seconds("timeout", timeout, positive=True),
    )


MARKERS: dict[str, Callable[..., Any]] = {
    "dbleak": dbleak,
    "no_dbleak": no_dbleak,
    "dbleak_jobs": dbleak_jobs,
    "dbleak_socket_churn": dbleak_socket_churn,
    "dbleak_http_load": dbleak_http_load,
}


def marker_line(name: str) -> str:
    """The `markers` ini line that documents a marker, built from its signature."""
    func = MARKERS[name]
    params = ", ".join(
        f"{p.name}={p.default!r}" for p in inspect.signature(func).parameters.values()
    )
    return f"{name}({params}): {func.__doc__}"


def validate(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Call the marker's signature with its arguments; a mistake becomes a DbleakError."""
    try:
        return MARKERS[name](*args, **kwargs)
    except TypeError as exc:
        raise DbleakError(f"@pytest.mark.{name}: {_type_error_text(name, exc)}") from None
    except DbleakError as exc:
        raise DbleakError(f"@pytest.mark.{name}: {exc}") from None


def misspelt(names: Iterable[str]) -> list[str]:
    """A one-line error for each marker name that looks like one of ours but is not.

    Only near misses (`dbleak_job`, `no_dbleaks`): a project's own markers are its own.
    """
    return [text for text in map(_misspelt, names) if text]


@functools.lru_cache(maxsize=1024)
def _misspelt(name: str) -> str:
    # Cached: every test of a 20,000-test suite carries the same few marker names.
    if name in MARKERS:
        return ""
    close = nearest(name, MARKERS, cutoff=0.8)
    if not close:
        return ""
    return (
        f"@pytest.mark.{name} is not a marker of pytest-dbleak; did you mean @pytest.mark.{close}?"
    )


_UNEXPECTED = re.compile(r"unexpected keyword argument '(?P<word>\w+)'")


def _type_error_text(name: str, exc: TypeError) -> str:
    # "dbleak() got an unexpected keyword argument 'alow'" -> drop the function name.
    text = str(exc)
    text = text.split(") ", 1)[1] if ") " in text else text
    typo = _UNEXPECTED.search(text)
    if typo:
        known = list(inspect.signature(MARKERS[name]).parameters)
        close = nearest(typo["word"], known, cutoff=0.6)
        if close:
            text += f"; did you mean {close!r}?"
    return text
