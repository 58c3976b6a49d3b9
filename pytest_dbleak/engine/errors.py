"""Errors the plugin raises, and the one place that keeps secrets out of messages."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)", re.I
)


# Top-level modules that each extra of pyproject.toml brings (with their dependencies).
EXTRA_MODULES = {
    "docker": frozenset({"testcontainers", "docker"}),
    "stress": frozenset(
        {
            "flask",
            "flask_socketio",
            "socketio",
            "engineio",
            "werkzeug",
            "simple_websocket",
            "websocket",
            "wsproto",
        }
    ),
}


def missing_extra(exc: ModuleNotFoundError, extra: str, user: str) -> str | None:
    """'dbleak_http_load needs the stress extra: pip install ...' if `exc` is about a module
    of `extra`; None if it is about anything else (a mistake elsewhere stays itself)."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRA_MODULES[extra]:
        return None
    return (
        f"{user} needs the {extra} extra: pip install 'pytest-dbleak[{extra}]' "
        f"(no module named {top!r})"
    )


def nearest(word: str, choices: Iterable[str], cutoff: float) -> str | None:
    """The choice `word` is most likely a typo of, if any is close enough: the one
    did-you-mean of the plugin (markers, their keywords, option values)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


class DbleakError(Exception):
    """A problem the user must fix (configuration, server, marker); shown as one line."""


class ServerGoneError(DbleakError):
    """The session's server stopped answering in the middle of the run."""


class Redactor:
    """Masks every password the plugin knows about, wherever it would be printed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if s}

    def add(self, secret: str | None) -> None:
        # Very short secrets would mask ordinary words; the plugin's own are long.
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        text = mask_url(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def mask_url(url: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", url)
