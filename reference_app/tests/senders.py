"""Notification senders for tests: real objects with the sender interface."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from reference_app.services.notifications import DeliveryError, OutgoingNotification


class FlakySender:
    """Fails the first ``failures`` sends, then delivers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[OutgoingNotification] = []

    def send(self, message: OutgoingNotification) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError("push service unavailable")
        self.delivered.append(message)


class BrokenSender:
    """A sender with a bug: it raises something that is not a DeliveryError."""

    def send(self, message: OutgoingNotification) -> None:
        raise ZeroDivisionError("bug in the sender")


class GatedSender:
    """Blocks inside send() until released: a slow push service, observable."""

    def __init__(self) -> None:
        self.sending = threading.Event()
        self.release = threading.Event()
        self.delivered: list[int] = []

    def send(self, message: OutgoingNotification) -> None:
        self.sending.set()
        if not self.release.wait(timeout=30):
            raise DeliveryError("the test never released the sender")
        self.delivered.append(message.id)


class FileRecordingSender:
    """A sender shared by several server processes: each delivery is one JSON
    line ``{"id": ..., "pid": ...}`` appended to ``$REFERENCE_APP_SENT_LOG``
    (O_APPEND: lines of concurrent writers never interleave).

    ``REFERENCE_APP_SENDER_DELAY`` seconds per send stand for a push service's
    latency; with ``REFERENCE_APP_SENDER_HANG=1`` every send announces itself in
    ``$REFERENCE_APP_SENT_LOG.started`` and never returns (a process that is
    killed in the middle of sending).
    """

    def __init__(self) -> None:
        self.path = os.environ["REFERENCE_APP_SENT_LOG"]
        self.delay = float(os.environ.get("REFERENCE_APP_SENDER_DELAY", "0"))
        self.hang = os.environ.get("REFERENCE_APP_SENDER_HANG") == "1"

    def _append(self, path: str, message: OutgoingNotification) -> None:
        line = json.dumps({"id": message.id, "pid": os.getpid()}) + "\n"
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(line)

    def send(self, message: OutgoingNotification) -> None:
        if self.hang:
            self._append(f"{self.path}.started", message)
            threading.Event().wait()  # until the process is killed
        if self.delay:
            time.sleep(self.delay)  # the push service's latency, not a wait for an event
        self._append(self.path, message)


def read_sent(path: Path) -> list[dict[str, int]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
