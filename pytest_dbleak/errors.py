"""Errors the plugin raises, and the one place that keeps secrets out of messages."""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)", re.I
)


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
