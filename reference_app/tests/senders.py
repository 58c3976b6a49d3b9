"""Notification senders for tests: real objects with the sender interface."""

from __future__ import annotations

import threading

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
