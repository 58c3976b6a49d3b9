"""Log format for the command-line entry points (the library only logs)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send log records to stderr, unless the process already set logging up."""
    logging.basicConfig(level=level, format=FORMAT)
