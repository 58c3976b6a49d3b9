"""``--dbleak-reuse`` for PostgreSQL: PostgreSQL's part of a reused server.

No pytest import. What every family shares (the state file, the locks, the session hold,
the detached watcher, stale detection, ``stop``) is in ``families._reuse``, whose
docstring explains the files and locks; here: how postgres's folder and command line are
made (as for the process backend: as root, the folder is the unprivileged account's and
the server runs as it through setpriv, while the watcher stays root), how it is secured
once it runs, its admin endpoint and login. The state files are keyed by ``pg-`` and the
template key (binary, its size and mtime, the server's account), apart from MySQL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_dbleak.families import _reuse
from pytest_dbleak.families._reuse import Prepared, State
from pytest_dbleak.families.base import Launch
from pytest_dbleak.families.postgresql.embedded import ADMIN_ROLE, PgEndpoint


@dataclass(frozen=True)
class PgReuse:
    """postgres under the watcher."""

    binary: str
    cache: Path
    key: str

    def prepare(self) -> Prepared:
        from pytest_dbleak.families.postgresql.embedded import prepare_server

        root, port, cmd = prepare_server(self.binary, self.cache, "dbleak-reuse-pg-")
        return Prepared(root, port, str(root), cmd)  # libpq's socket "host" is its folder

    def secure(self, prepared: Prepared, pid: int, password: str, timeout: float) -> None:
        from pytest_dbleak.families.postgresql.embedded import wait_and_secure

        local = PgEndpoint("127.0.0.1", prepared.port, ADMIN_ROLE, "", socket_dir=prepared.socket)
        wait_and_secure(local, pid, password, timeout)

    def endpoint(self, state: State) -> PgEndpoint:
        return PgEndpoint(
            "127.0.0.1", state.port, ADMIN_ROLE, state.password, socket_dir=state.socket
        )

    def check_login(self, state: State) -> None:
        self.endpoint(state).connect(timeout=2, read_timeout=5).close()


def launch(binary: str | None, cache: Path, timeout: float, idle: float) -> Launch:
    """Join this user's reused postgres for `binary` in `cache`, or start one that stays."""
    from pytest_dbleak.families.postgresql.embedded import (
        ensure_template,
        needed_binary,
        run_as,
        template_key,
    )

    binary = needed_binary(binary)
    ensure_template(binary, cache)  # before the state lock: an initdb takes seconds
    key = "pg-" + template_key(binary, run_as())
    return _reuse.launch(PgReuse(binary, cache, key), cache, timeout, idle)
