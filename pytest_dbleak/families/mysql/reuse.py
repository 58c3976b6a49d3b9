"""``--dbleak-reuse`` for MySQL and MariaDB: MySQL's part of a reused server.

No pytest import. What every family shares (the state file, the locks, the session hold,
the detached watcher, stale detection, ``stop``) is in ``families._reuse``, whose
docstring explains the files and locks; here: how mariadbd's folder and command line are
made, how it is secured once it runs, its admin endpoint and login. The state files are
keyed by the template key (binary, its size and mtime, OS user).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.families import _reuse
from pytest_dbleak.families._reuse import Prepared, State
from pytest_dbleak.families.base import Launch
from pytest_dbleak.families.mysql.monitor import Endpoint


@dataclass(frozen=True)
class MySQLReuse:
    """mariadbd (or mysqld) under the watcher."""

    binary: str
    template: Path
    key: str

    def prepare(self) -> Prepared:
        from pytest_dbleak.families.mysql.embedded import free_port, server_command, server_root

        root = server_root(self.template, prefix="dbleak-reuse-")
        port = free_port()
        sock = str(root / "mysqld.sock")
        return Prepared(root, port, sock, server_command(self.binary, root, port))

    def secure(self, prepared: Prepared, pid: int, password: str, timeout: float) -> None:
        from pytest_dbleak.families.mysql.embedded import wait_and_secure

        wait_and_secure(prepared.socket, pid, password, timeout, prepared.root / "error.log")

    def endpoint(self, state: State) -> Endpoint:
        from pytest_dbleak.families.mysql.embedded import ADMIN_USER

        return Endpoint(
            "127.0.0.1", state.port, ADMIN_USER, state.password, unix_socket=state.socket
        )

    def check_login(self, state: State) -> None:
        self.endpoint(state).connect(timeout=2, read_timeout=5).close()


def launch(binary: str | None, cache: Path, timeout: float, idle: float) -> Launch:
    """Join this user's reused server for `binary` in `cache`, or start one that stays."""
    from pytest_dbleak.families.mysql.embedded import ensure_template, template_key

    if binary is None:
        raise DbleakError("no mariadbd or mysqld found on PATH (or give --dbleak-mysqld)")
    template = ensure_template(binary, cache)
    return _reuse.launch(MySQLReuse(binary, template, template_key(binary)), cache, timeout, idle)
