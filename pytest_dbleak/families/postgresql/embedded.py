"""PostgreSQL's process backend: ``postgres`` started from a cached ``initdb`` template.

No pytest import. The same life as the MariaDB process backend (embedded.py): a template
initialised once per binary, copied per session (to /dev/shm where it can), a server on
127.0.0.1 and a unix socket in the session's own 0700 folder, owned by a reaper that
outlives SIGKILL and Ctrl-C, and a wait for a real login.

``postgres`` refuses to run as root: as root, the template, the copy and the server
belong to the unprivileged ``nobody`` account, and the server is started through
``setpriv``. The admin role logs in without a password over the unix socket only (the
socket's folder is the session's, closed to other users) and with a random password
over TCP.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.signals import interrupts_held
from pytest_dbleak.families._process import (
    ReadyNotice,
    Reaped,
    alive,
    free_port,
    session_parent,
    spawn_under_reaper,
    stop_reaper,
    usable_cache,
)

log = logging.getLogger(__name__)

ADMIN_ROLE = "dbleak_admin"
# Where distributions put the server binaries: Debian and Ubuntu keep each major version
# in its own folder, outside PATH; the highest version wins.
_DISTRIBUTION_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
# A throwaway server needs no durability: these make DDL and commits cheap.
_FAST_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "logging_collector=off",
    "max_connections=200",
    # Dynamic shared memory as files in the datadir (pg_dynshmem), not POSIX segments in
    # /dev/shm: the reaper kills postgres with SIGKILL, which leaves a POSIX segment behind
    # for good; files in the folder go with it.
    "dynamic_shared_memory_type=mmap",
)
_UNPRIVILEGED = "nobody"


@dataclass(frozen=True)
class PgEndpoint:
    """How to reach a PostgreSQL server as its administrator (the seam's ``Endpoint``)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    socket_dir: str | None = None  # libpq's host for a unix socket is its folder
    database: str = "postgres"  # the administrator's own database
    sslmode: str | None = None  # as the admin URL asked; else none to this machine

    @property
    def unix_socket(self) -> str | None:
        """The socket's folder: what a libpq client gives as ``host`` to use it."""
        return self.socket_dir

    @property
    def is_local(self) -> bool:
        return self.socket_dir is not None or self.host in ("127.0.0.1", "localhost", "::1")

    def connect(
        self,
        *,
        dbname: str | None = None,
        timeout: float = 5.0,
        read_timeout: float = 30,
        lock_timeout: float | None = None,
    ) -> Any:
        """An autocommit psycopg connection: a snapshot read inside a transaction would be
        frozen at its first statement.

        libpq has no read timeout: `read_timeout` bounds each statement on the server
        instead (``statement_timeout``), so a hung statement of ours still ends.
        `lock_timeout`: how long our own statements may wait on a lock.
        """
        import psycopg  # on first use: a run that never needs PostgreSQL does not pay it

        options = f"-c statement_timeout={max(1, round(read_timeout * 1000))}"
        if lock_timeout is not None:
            options += f" -c lock_timeout={max(1, round(lock_timeout * 1000))}"
        return psycopg.connect(
            host=self.socket_dir or self.host,
            port=self.port,
            user=self.user,
            # Over the session's own socket the role logs in without one (trust).
            password=self.password or None,
            dbname=dbname or self.database,
            autocommit=True,
            connect_timeout=max(1, round(timeout)),
            options=options,
            # TLS to a server on this machine buys nothing and costs a handshake.
            sslmode=self.sslmode or ("disable" if self.is_local else "prefer"),
        )


@dataclass
class PgServer:
    """A PostgreSQL server the session started; ``stop`` ends it and removes its files."""

    endpoint: PgEndpoint
    version: str
    root: Path
    pid: int
    _reaper: subprocess.Popen[str] | None = field(default=None, repr=False)

    def stop(self) -> None:
        stop_reaper(self._reaper)


def find_postgres(explicit: str | None) -> str | None:
    """The ``postgres`` binary: the one named, else PATH, else a distribution's place."""
    if explicit:
        path = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if path is None:
            raise DbleakError(f"--dbleak-postgres: {explicit} is not an executable file")
        return path
    found = shutil.which("postgres")
    if found:
        return found
    candidates = [
        Path(folder) / "postgres"
        for pattern in _DISTRIBUTION_GLOBS
        for folder in glob.glob(pattern)
    ]
    runnable = [c for c in candidates if os.access(c, os.X_OK)]
    return str(max(runnable, key=_version_key)) if runnable else None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path.parent.parent)))


def run_as() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        raise DbleakError(
            f"postgres cannot run as root, and there is no '{_UNPRIVILEGED}' account "
            "to run it as; run pytest as an unprivileged user"
        ) from None


def _as_user(cmd: list[str], account: pwd.struct_passwd | None) -> list[str]:
    if account is None:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise DbleakError("postgres cannot run as root, and setpriv (util-linux) is not on PATH")
    return [
        setpriv,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        *cmd,
    ]


def _give(path: Path, account: pwd.struct_passwd | None) -> None:
    """Hand `path` and everything under it to `account` (a no-op when not root). What
    already belongs to it (a copy that kept its owner) is not walked again."""
    if account is None:
        return
    os.chown(path, account.pw_uid, account.pw_gid)
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.stat(os.path.join(folder, d)).st_uid != account.pw_uid]
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), account.pw_uid, account.pw_gid)


def template_key(binary: str, account: pwd.struct_passwd | None) -> str:
    real = os.path.realpath(binary)
    st = os.stat(real)
    uid = account.pw_uid if account is not None else os.geteuid()
    # The last field changes whenever initdb's arguments do: an older template is rebuilt.
    raw = f"postgres:{real}:{st.st_size}:{int(st.st_mtime)}:{uid}:wal1"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def ensure_template(binary: str, cache: Path) -> Path:
    """An initdb'd datadir for `binary`, built once, appearing atomically by rename."""
    import fcntl

    usable_cache(cache)
    account = run_as()
    template = cache / f"pg-template-{template_key(binary, account)}"
    if (template / "READY").exists():
        return template
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / "READY").exists():
            return template
        # As root, initdb runs as the unprivileged account, which may not enter the
        # cache (~root is 0700): it builds in a folder of its own, moved in when done.
        build = Path(tempfile.mkdtemp(prefix="building-pg-", dir=None if account else cache))
        try:
            _give(build, account)
            _initdb(binary, build / "data", account)
            (build / "READY").write_text(binary + "\n")
            shutil.rmtree(template, ignore_errors=True)
            shutil.move(build, template)  # a rename within the cache, a copy from /tmp
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return template


def _initdb(binary: str, datadir: Path, account: pwd.struct_passwd | None) -> None:
    initdb = Path(os.path.realpath(binary)).with_name("initdb")
    if not os.access(initdb, os.X_OK):
        raise DbleakError(f"the postgresql process backend needs initdb next to {binary}")
    cmd = _as_user(
        [
            str(initdb),
            f"--pgdata={datadir}",
            f"--username={ADMIN_ROLE}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
            # One WAL segment of 1 MB instead of 16: the copy every session makes of the
            # template is 23 MB instead of 39 (its WAL was 16 MB of zeroes).
            "--wal-segsize=1",
        ],
        account,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not (datadir / "PG_VERSION").exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DbleakError(f"initialising a datadir with {initdb} failed: {' | '.join(tail)}")


class Spawned:
    """postgres set off under its reaper: ``wait`` returns it running, ``cancel`` ends it.

    Split so that the server boots while pytest imports and collects.
    """

    def __init__(self, root: Path, port: int, reaped: Reaped, notice: ReadyNotice) -> None:
        self.root, self.port = root, port
        self._reaped = reaped
        self._notice = notice

    @property
    def pid(self) -> int:
        """The server's pid, once its reaper has copied the template and started it."""
        return self._reaped.pid()

    def wait(self, timeout: float) -> PgServer:
        password = secrets.token_hex(16)
        local = PgEndpoint("127.0.0.1", self.port, ADMIN_ROLE, "", socket_dir=str(self.root))
        try:
            pid = self._reaped.pid(timeout)
            version = wait_and_secure(local, pid, password, timeout, self._notice)
        except BaseException:
            self.cancel()
            raise
        finally:
            self._notice.close()
        endpoint = PgEndpoint(
            "127.0.0.1", self.port, ADMIN_ROLE, password, socket_dir=str(self.root)
        )
        return PgServer(endpoint, version, self.root, pid, self._reaped.proc)

    def cancel(self) -> None:
        with interrupts_held():  # a second Ctrl-C must not cut the clean-up short
            self._notice.close()
            stop_reaper(self._reaped.proc)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)


def spawn_postgres(binary: str | None, cache: Path) -> Spawned:
    """Copy the template and start postgres under its reaper; do not wait for it."""
    binary = needed_binary(binary)
    template = ensure_template(binary, cache)
    root = Path(tempfile.mkdtemp(prefix="dbleak-pg-", dir=session_parent()))
    reaped: Reaped | None = None
    notice = ReadyNotice(root)  # before _give: the server's account must write to it
    try:
        # Its reaper copies the template while pytest goes on: ``cp -a`` keeps the owner,
        # which must then already be the server's account. A template that is not (copied
        # by someone else as root) is copied and handed over here first.
        by_reaper = _owned_by(template / "data", run_as())
        port, cmd = _fill(binary, template, root, copy=not by_reaper)
        copy = (template / "data", root / "data") if by_reaper else None
        reaped = spawn_under_reaper(root, cmd, notice.env(), copy=copy)
    except BaseException:
        notice.close()
        stop_reaper(None if reaped is None else reaped.proc)
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
        raise
    return Spawned(root, port, reaped, notice)


def _owned_by(datadir: Path, account: pwd.struct_passwd | None) -> bool:
    """The datadir and its control file belong to `account` (or to us, without one)."""
    uid = os.geteuid() if account is None else account.pw_uid
    try:
        return all(p.stat().st_uid == uid for p in (datadir, datadir / "global" / "pg_control"))
    except OSError:
        return False


def prepare_server(binary: str | None, cache: Path, prefix: str) -> tuple[Path, int, list[str]]:
    """A server's own folder (a copy of the template, given to the server's account), a
    free port and its command line, for whoever starts it (--dbleak-reuse's watcher)."""
    binary = needed_binary(binary)
    template = ensure_template(binary, cache)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=session_parent()))
    try:
        port, cmd = _fill(binary, template, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root, port, cmd


def needed_binary(binary: str | None) -> str:
    if binary is None:
        raise DbleakError(
            "no postgres found on PATH or in /usr/lib/postgresql/*/bin (or give --dbleak-postgres)"
        )
    return binary


def _fill(binary: str, template: Path, root: Path, *, copy: bool = True) -> tuple[int, list[str]]:
    """Copy the template's datadir into `root` (unless the server's reaper will: `copy`
    false), hand it to the server's account; the port and the command line of a server
    on it."""
    account = run_as()
    _reachable_by(root.parent, account)
    datadir = root / "data"
    if copy:
        _copy_datadir(template / "data", datadir)
    _give(root, account)
    port = free_port()
    cmd = _as_user(
        [
            binary,
            "-D",
            str(datadir),
            "-k",
            str(root),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            *(arg for setting in _FAST_SETTINGS for arg in ("-c", setting)),
        ],
        account,
    )
    return port, cmd


def start_postgres(binary: str | None, cache: Path, timeout: float) -> PgServer:
    """Copy the template, start postgres under its reaper, wait for a login."""
    return spawn_postgres(binary, cache).wait(timeout)


def _copy_datadir(source: Path, target: Path) -> None:
    """Copy the template's ~1,000 files: ``cp -a`` takes 60% of the time shutil takes
    (one C loop, no Python per file), and keeps their owner (the server's account)."""
    cp = shutil.which("cp")
    if cp is not None:
        done = subprocess.run(
            [cp, "-a", str(source), str(target)], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return
        log.debug("dbleak: cp -a failed (%s); copying with shutil", done.stderr.strip())
        shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def _reachable_by(folder: Path, account: pwd.struct_passwd | None) -> None:
    """As root, postgres runs as `account`, which must enter every folder above its own:
    else it fails with nothing but a socket error. Say which folder and what to do."""
    if account is None:
        return
    for above in (folder, *folder.parents):
        st = above.stat()
        if st.st_uid == account.pw_uid or st.st_mode & stat.S_IXOTH:
            continue
        raise DbleakError(
            f"postgres runs as {account.pw_name} (it refuses root), which cannot enter "
            f"{above} (mode {stat.S_IMODE(st.st_mode):04o}): set TMPDIR to a folder "
            "others may enter, such as /tmp"
        )


def wait_and_secure(
    local: PgEndpoint, pid: int, password: str, timeout: float, notice: ReadyNotice | None = None
) -> str:
    """Wait for a login over the socket, then give the admin role its TCP password. With
    a `notice`, the server's ready message ends each wait between two login attempts."""
    import psycopg

    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            conn = local.connect(timeout=timeout)
            break
        except psycopg.OperationalError as exc:
            if not alive(pid):
                raise DbleakError(f"postgres exited at start: {_first_line(exc)}") from None
            if time.monotonic() > deadline:
                raise DbleakError(
                    f"postgres did not accept a login within {timeout:g} s "
                    f"(--dbleak-startup-timeout): {_first_line(exc)}"
                ) from None
            if notice is not None and not notice.ready:
                notice.wait(delay)  # returns the moment the server says it is ready
            else:
                time.sleep(delay)  # no such word to come, or a login failed after it
            delay = min(delay * 1.5, 0.05)
    try:
        from psycopg import sql

        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ADMIN_ROLE), sql.Literal(password)
            )
        )
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else ""
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
