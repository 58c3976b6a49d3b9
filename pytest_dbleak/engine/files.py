"""Writing the plugin's output files. No pytest import."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str | Iterable[str]) -> Path:
    """Write `text` (or its pieces, one after the other: a big report never has to be
    one string in memory) to `path` so that a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name in the same directory: os.replace is atomic only within
    # one file system, and two writers (xdist, two runs) must not share a temporary file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            if isinstance(text, str):
                handle.write(text)
            else:
                handle.writelines(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
