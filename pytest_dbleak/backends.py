"""Where the session's MySQL-compatible server comes from: process, docker or url.

No pytest import. Each backend yields a ``RunningServer``: an administrative
``Endpoint`` plus a ``stop()`` that releases everything the backend started.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .containers import docker_available
from .errors import DbleakError, Redactor
from .probe import Endpoint
from .signals import keep_out_of_forks

log = logging.getLogger(__name__)

_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin", "/opt/mysql/bin")
ADMIN_USER = "dbleak_admin"

# Small InnoDB files make the template cheap to copy (~20 MB instead of ~110 MB), and
# durability settings that a throwaway test server does not need make DDL fast.
_INNODB_FILES = (
    "--innodb-log-file-size=8M",
    "--innodb-data-file-path=ibdata1:4M:autoextend",
    "--innodb-autoextend-increment=1",
)
_FAST_FLAGS = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--skip-name-resolve",
    "--skip-log-bin",
)


@dataclass(frozen=True)
class ServerInfo:
    """Facts about the session's server (the ``dbleak_server`` fixture)."""

    backend: str
    host: str
    port: int
    socket: str | None
    version: str
    admin_url: str = field(repr=False)

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in self.version.lower()

    def __repr__(self) -> str:  # the admin URL holds a password: never print it
        return (
            f"ServerInfo(backend={self.backend!r}, host={self.host!r}, port={self.port}, "
            f"socket={self.socket!r}, version={self.version!r})"
        )


@dataclass
class RunningServer:
    """A server the session can use; ``stop`` releases what the backend started."""

    backend: str
    endpoint: Endpoint
    owned: bool  # the plugin started it: every client connection on it is ours
    stop: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)  # one-line remarks for the terminal

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"


# -- url -----------------------------------------------------------------------
def parse_mysql_url(url: str) -> Endpoint:
    """An admin Endpoint from `mysql://user:pw@host:port`; rejects other databases."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DbleakError(
            "--dbleak-mysql-url: not a URL (expected mysql://user:pw@host:port)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("mysql", "mariadb"):
        raise DbleakError(
            f"--dbleak-mysql-url: a mysql:// or mariadb:// URL is needed, got {backend}://"
        )
    unix_socket = parsed.query.get("unix_socket")
    if isinstance(unix_socket, tuple):
        unix_socket = unix_socket[0]
    return Endpoint(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        unix_socket=unix_socket,
    )


def start_url(url: str, timeout: float) -> RunningServer:
    """The given server, once a login succeeded within the startup timeout.

    Nothing listening, or a refused login, fails at once; a server that accepts the TCP
    connection but does not greet (still starting, a slow network) gets `timeout`.
    """
    import pymysql

    server = RunningServer("url", parse_mysql_url(url), owned=False)
    limit = max(0.5, timeout)
    try:
        server.endpoint.connect(timeout=limit, read_timeout=limit).close()
    except pymysql.err.Error as exc:
        raise connect_error(server, exc) from None
    return server


# -- docker ----------------------------------------------------------------------
def start_docker(image: str, timeout: float) -> RunningServer:
    from . import containers

    endpoint, stop, notes = containers.start(image, timeout)
    return RunningServer("docker", endpoint, owned=True, stop=stop, notes=notes)


# -- process ---------------------------------------------------------------------
def find_mysqld(explicit: str | None) -> str | None:
    if explicit:
        path = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if path is None:
            raise DbleakError(f"--dbleak-mysqld: {explicit} is not an executable file")
        return path
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH_PATH])
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


def _is_mariadb(binary: str) -> bool:
    real = os.path.realpath(binary)
    if "mariadb" in os.path.basename(real):
        return True
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return "mariadb" in out.stdout.lower()


def _template_key(binary: str) -> str:
    real = os.path.realpath(binary)
    st = os.stat(real)
    raw = f"{real}:{st.st_size}:{int(st.st_mtime)}:{os.geteuid()}:{' '.join(_INNODB_FILES)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _user_flags() -> list[str]:
    # mysqld refuses to run as root unless told to.
    return ["--user=root"] if os.geteuid() == 0 else []


def usable_cache(cache: Path) -> None:
    """Create the cache folder if need be and write in it, or say in one line why not."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=cache)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if cache.exists() and not cache.is_dir():
            wrong = "it is a file, not a folder"
        elif cache.is_dir():
            wrong = f"cannot write in it ({exc.strerror or exc})"
        else:
            parent = next((p for p in cache.parents if p.exists()), cache.anchor)
            wrong = f"cannot create it under {parent} ({exc.strerror or exc})"
        raise DbleakError(
            f"the template cache folder {cache} cannot be used: {wrong}; "
            "choose another with --dbleak-cache-dir"
        ) from None


def ensure_template(binary: str, cache: Path) -> Path:
    """An initialised datadir for `binary`, built once and shared by every session.

    Parallel sessions (pytest-xdist, several pytest runs) serialise on a lock file, and
    the template appears atomically by rename, so nobody copies a half-built one.
    """
    usable_cache(cache)
    template = cache / f"template-{_template_key(binary)}"
    if (template / "READY").exists():
        return template
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / "READY").exists():
            return template
        build = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        try:
            _initialise(binary, build / "data")
            (build / "READY").write_text(binary + "\n")
            shutil.rmtree(template, ignore_errors=True)
            os.rename(build, template)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return template


def _initialise(binary: str, datadir: Path) -> None:
    if _is_mariadb(binary):
        installer = shutil.which(
            "mariadb-install-db",
            path=os.pathsep.join(
                [str(Path(binary).parent), os.environ.get("PATH", ""), *_SEARCH_PATH]
            ),
        ) or shutil.which("mysql_install_db")
        if installer is None:
            raise DbleakError("the process backend needs mariadb-install-db next to mariadbd")
        cmd = [
            installer,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--tmpdir={datadir.parent}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *_user_flags(),
            *_INNODB_FILES,
        ]
    else:
        cmd = [
            binary,
            "--no-defaults",
            "--initialize-insecure",
            f"--datadir={datadir}",
            f"--tmpdir={datadir.parent}",
            *_user_flags(),
            *_INNODB_FILES,
        ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DbleakError(f"initialising a datadir with {cmd[0]} failed: {' | '.join(tail)}")


def _session_parent() -> str | None:
    """Where a session's datadir goes: memory-backed /dev/shm when it has room.

    A throwaway server needs no durability, and on tmpfs both the copy of the template
    and the server's start are about twice as fast as on disk. TMPDIR, when set, wins.
    """
    if os.environ.get("TMPDIR"):
        return None
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    return "/dev/shm" if free > 512 * 1024 * 1024 and os.access("/dev/shm", os.W_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The reaper owns the server. It waits for EOF on its stdin, which only pytest holds
# open: when pytest ends for any reason (exit, Ctrl-C, SIGKILL) the pipe closes and
# the reaper kills the server and removes its files. It runs in its own session so a
# Ctrl-C in the terminal reaches pytest only.
_REAPER = r"""
dir=$1; shift
"$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
while read -r _; do :; done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
"""


class Launch:
    """A server on its way up: ``wait()`` returns it running, ``cancel()`` gives it up.

    Launching mariadbd and waiting for its login are split so that the caller can do
    other work (importing SQLAlchemy) while the server boots.
    """

    def __init__(
        self, wait: Callable[[], RunningServer], cancel: Callable[[], None] = lambda: None
    ) -> None:
        self._wait = wait
        self._cancel = cancel

    def wait(self) -> RunningServer:
        return self._wait()

    def cancel(self) -> None:
        self._cancel()


def launch_process(binary: str | None, cache: Path, timeout: float) -> Launch:
    """Copy the template and spawn mariadbd under its reaper; do not wait for it."""
    if binary is None:
        raise DbleakError("no mariadbd or mysqld found on PATH (or give --dbleak-mysqld)")
    template = ensure_template(binary, cache)
    root = Path(tempfile.mkdtemp(prefix="dbleak-", dir=_session_parent()))
    reaper: subprocess.Popen[str] | None = None

    def cancel() -> None:
        _stop_reaper(reaper)
        shutil.rmtree(root, ignore_errors=True)

    try:
        datadir = root / "data"
        shutil.copytree(template / "data", datadir)
        (root / "tmp").mkdir()
        sock = str(root / "mysqld.sock")
        port = free_port()
        cmd = [
            binary,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'mysqld.pid'}",
            f"--log-error={root / 'error.log'}",
            f"--tmpdir={root / 'tmp'}",
            *_user_flags(),
            *_INNODB_FILES,
            *_FAST_FLAGS,
        ]
        reaper = subprocess.Popen(
            ["/bin/sh", "-c", _REAPER, "dbleak-reaper", str(root), *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        keep_out_of_forks(reaper.stdin)
        assert reaper.stdout is not None
        pid = int(reaper.stdout.readline())
        reaper.stdout.close()
    except BaseException:
        cancel()
        raise

    def wait() -> RunningServer:
        password = secrets.token_hex(16)
        try:
            _wait_and_secure(sock, pid, password, timeout, root / "error.log")
        except BaseException:
            cancel()
            raise
        endpoint = Endpoint("127.0.0.1", port, ADMIN_USER, password, unix_socket=sock)
        return RunningServer("process", endpoint, owned=True, stop=lambda: _stop_reaper(reaper))

    return Launch(wait, cancel)


def start_process(binary: str | None, cache: Path, timeout: float) -> RunningServer:
    return launch_process(binary, cache, timeout).wait()


def _wait_and_secure(sock: str, pid: int, password: str, timeout: float, errlog: Path) -> None:
    """Wait for a real login, then replace the template's passwordless root."""
    import pymysql

    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            # Probe with a socket we close ourselves: PyMySQL leaks its unix socket when
            # connect() fails before the handshake (a ResourceWarning later).
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(sock)
            conn = pymysql.connect(
                unix_socket=sock, user="root", autocommit=True, ssl_disabled=True
            )
            break
        except (OSError, pymysql.err.OperationalError):
            if not _alive(pid):
                raise DbleakError(f"mariadbd/mysqld exited at start: {_log_tail(errlog)}") from None
            if time.monotonic() > deadline:
                raise DbleakError(
                    f"the server did not accept a login within {timeout:g} s: {_log_tail(errlog)}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{ADMIN_USER}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION")
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (password,))
    finally:
        conn.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False
    except OSError:
        return True  # no procfs: assume alive and rely on the deadline


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if "ERROR" in ln]
    except OSError:
        return "no error log"
    return lines[-1].split("[ERROR]", 1)[-1].strip() if lines else "no error in the log"


def _stop_reaper(reaper: subprocess.Popen[str] | None) -> None:
    if reaper is None or reaper.poll() is not None:
        return
    assert reaper.stdin is not None
    with contextlib.suppress(OSError):
        reaper.stdin.close()
    try:
        reaper.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(reaper.pid, signal.SIGKILL)
        reaper.wait()


# -- selection -------------------------------------------------------------------
def launch(
    backend: str,
    *,
    mysql_url: str | None,
    mysqld: str | None,
    image: str,
    cache: Path,
    timeout: float,
    redactor: Redactor,
) -> Launch:
    """Set off the server the settings ask for; DbleakError says why it cannot be had.

    Only the process backend does work before ``wait()``; the others do it all there.
    """
    if mysql_url:
        redactor.add(parse_mysql_url(mysql_url).password)
    if backend == "url" or (backend == "auto" and mysql_url):
        if not mysql_url:
            raise DbleakError("the url backend needs --dbleak-mysql-url or DBLEAK_MYSQL_URL")
        return Launch(lambda: start_url(mysql_url, timeout))
    if backend == "docker":
        return Launch(lambda: start_docker(image, timeout))
    binary = find_mysqld(mysqld)
    if backend == "auto" and docker_available():
        return Launch(lambda: _docker_else_process(image, binary, cache, timeout))
    if backend == "process" or binary is not None:
        return launch_process(binary, cache, timeout)
    raise DbleakError(
        "no MySQL server available: give --dbleak-mysql-url (url backend), start Docker "
        "(docker backend), or install mariadbd/mysqld (process backend)"
    )


def _docker_else_process(
    image: str, binary: str | None, cache: Path, timeout: float
) -> RunningServer:
    """auto with a daemon: docker, unless it cannot give us a server and mariadbd can."""
    try:
        return start_docker(image, timeout)
    except DbleakError as exc:
        if binary is None:
            raise
        server = start_process(binary, cache, timeout)
        server.notes.append(f"docker backend unavailable ({exc}); using the process backend")
        return server


def start(
    backend: str,
    *,
    mysql_url: str | None,
    mysqld: str | None,
    image: str,
    cache: Path,
    timeout: float,
    redactor: Redactor,
) -> RunningServer:
    """Start (or reach) the server the settings ask for; DbleakError says why not."""
    return launch(
        backend,
        mysql_url=mysql_url,
        mysqld=mysqld,
        image=image,
        cache=cache,
        timeout=timeout,
        redactor=redactor,
    ).wait()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(server: RunningServer, version: str) -> ServerInfo:
    ep = server.endpoint
    from sqlalchemy.engine import URL

    admin = URL.create(
        "mysql+pymysql",
        username=ep.user,
        password=ep.password,
        host=ep.host,
        port=ep.port,
    ).render_as_string(hide_password=False)
    return ServerInfo(server.backend, ep.host, ep.port, ep.unix_socket, version, admin)


def connect_error(server: RunningServer, exc: Exception) -> DbleakError:
    """The one-line error for a server that cannot be reached or refuses the login."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in (1045, 1044, 1698):
        why = "refused the login (wrong user or password)"
    elif code in (2003, 2005, 2006, 2013):
        why = "cannot be reached"
    else:
        why = f"failed: {_one_line(exc)}"
    return DbleakError(f"MySQL server at {server.where} {why} [{server.backend} backend]")
