"""The process backend: mariadbd (or mysqld) started from a cached template datadir.

No pytest import. The template is initialised once per binary; each session copies it
(to /dev/shm where it can), starts the server under a reaper that outlives SIGKILL, and
waits for a real login.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.signals import interrupts_held
from pytest_dbleak.families._process import (
    ReadyNotice,
    alive,
    free_port,
    kill_group,
    session_parent,
    spawn_under_reaper,
    stop_reaper,
    usable_cache,
)
from pytest_dbleak.families.base import Launch, RunningServer
from pytest_dbleak.families.mysql.monitor import Endpoint

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
    # Created at every start: 12 MB of zeroes written by default, then removed.
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
    "--innodb-buffer-pool-size=64M",
    # A throwaway server has no warm pages to restore; loading the template's dump held
    # "ready for connections" back by ~200 ms in 1 start of 15 when pytest's imports
    # kept the other core busy (measured: 4 of 60 starts, none of 60 without it).
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    # Aria (system tables, temporary tables) and MyISAM caches of 128 MB each are set up
    # at every start: ~15 ms of it. "loose-": MySQL has no Aria and must not refuse.
    "--loose-aria-pagecache-buffer-size=16M",
    "--key-buffer-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--skip-name-resolve",
    "--skip-log-bin",
)


def find_mysqld(explicit: str | None) -> str | None:
    """The server binary: the one the user named (checked), else the first `mariadbd` or
    `mysqld` on PATH, then in the usual server folders outside PATH (_SEARCH_PATH)."""
    if explicit:
        path = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if path is None:
            raise DbleakError(f"--dbleak-mysqld: {explicit} is not an executable file")
        check_server(path)
        return path
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH_PATH])
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name, path=search)
        if found:
            return found
    return None


# "mariadbd  Ver 10.11.19-MariaDB..." / "/usr/sbin/mysqld  Ver 8.4.3 for Linux on x86_64 (...)".
# Clients and tools print "mariadb  Ver 15.1 Distrib 10.11.19-MariaDB" or "mysql  Ver 8.4.3".
_VERSION_LINE = re.compile(r"^(?P<prog>\S+)\s+Ver\s+\S+(?P<rest>.*)$")
_VERSION_TIMEOUT = 10.0  # seconds; a server answers in milliseconds
_SERVER_NAME = re.compile(r"^(mysqld|mariadbd)([-.][\w.-]*)?$")


def check_server(path: str) -> None:
    """Refuse, in one line naming the fix, a binary that is not a server the reaper can own.

    The reaper stops the server by killing its own child, so the binary must be the
    server itself, running in the foreground: a wrapper script (mysqld_safe, a service
    script) starts the real server as its own child, which outlives the run. A script is
    refused before it is run at all - mysqld_safe ignores `--version` and starts a server.
    """
    try:
        with open(path, "rb") as binary:
            head = binary.read(2)
    except OSError as exc:
        raise DbleakError(f"--dbleak-mysqld: cannot read {path} ({exc.strerror or exc})") from None
    if head == b"#!":
        raise DbleakError(
            f"--dbleak-mysqld: {path} is a script (a wrapper such as mysqld_safe), not "
            f"the server; it would leave the server running in the background: "
            f"{_server_hint()}"
        )
    line = _version_line(path)
    said = repr(line[:80]) if line else "nothing"
    found = _VERSION_LINE.match(line)
    if found is None:
        raise DbleakError(
            f"--dbleak-mysqld: {path} is not a MySQL or MariaDB server (its --version "
            f"says {said}): {_server_hint()}"
        )
    if "Distrib" in found["rest"] or not _SERVER_NAME.match(os.path.basename(found["prog"])):
        raise DbleakError(
            f"--dbleak-mysqld: {path} is a client or tool, not the server (its --version "
            f"says {said}): {_server_hint()}"
        )


def _version_line(path: str) -> str:
    """The first line `path --no-defaults --version` prints, or why there is none."""
    try:
        # Its own session: whatever it starts is killed with it if it does not return.
        proc = subprocess.Popen(
            [path, "--no-defaults", "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        raise DbleakError(
            f"--dbleak-mysqld: {path} cannot be run ({exc.strerror or exc}): {_server_hint()}"
        ) from None
    try:
        out, _ = proc.communicate(timeout=_VERSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise DbleakError(
            f"--dbleak-mysqld: {path} --version did not return within "
            f"{_VERSION_TIMEOUT:g} s, so it is not a server run in the foreground: "
            f"{_server_hint()}"
        ) from None
    except BaseException:
        kill_group(proc)
        raise
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _server_hint() -> str:
    found = find_mysqld(None)
    if found is not None:
        return f"give the server binary, e.g. --dbleak-mysqld={found}, or leave the option out"
    return "give the server binary (mariadbd or mysqld), e.g. --dbleak-mysqld=/usr/sbin/mariadbd"


def _is_mariadb(binary: str) -> bool:
    real = os.path.realpath(binary)
    if "mariadb" in os.path.basename(real):
        return True
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return "mariadb" in out.stdout.lower()


def template_key(binary: str) -> str:
    real = os.path.realpath(binary)
    st = os.stat(real)
    raw = f"{real}:{st.st_size}:{int(st.st_mtime)}:{os.geteuid()}:{' '.join(_INNODB_FILES)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# MariaDB's METADATA_LOCK_INFO plugin lists the metadata locks each connection holds, so
# that a leaked transaction's description names the tables it keeps locked (MySQL's
# performance_schema.metadata_locks tells without it). Debian and MariaDB's own builds
# ship it, unloaded, in the plugin folder beside the binary's; MySQL has no such file.
_LOCK_INFO_PLUGIN = "metadata_lock_info.so"


@functools.cache
def lock_info_flags(binary: str) -> tuple[str, ...]:
    """The flags that load METADATA_LOCK_INFO into `binary`, where its plugin is found."""
    base = Path(os.path.realpath(binary)).parent.parent
    for folder in (base / "lib" / "mysql" / "plugin", base / "lib" / "plugin"):
        if (folder / _LOCK_INFO_PLUGIN).is_file():
            return (f"--plugin-dir={folder}", f"--plugin-load-add={_LOCK_INFO_PLUGIN}")
    return ()


def _user_flags() -> list[str]:
    # mysqld refuses to run as root unless told to.
    return ["--user=root"] if os.geteuid() == 0 else []


def ensure_template(binary: str, cache: Path) -> Path:
    """An initialised datadir for `binary`, built once and shared by every session.

    Parallel sessions (pytest-xdist, several pytest runs) serialise on a lock file, and
    the template appears atomically by rename, so nobody copies a half-built one.
    """
    usable_cache(cache)
    template = cache / f"template-{template_key(binary)}"
    if _is_ready(template):
        return template
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_ready(template):
            return template
        # Built aside and renamed into place only once verified: a build that fails or is
        # interrupted leaves nothing that a later run would take for a template.
        build = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
        try:
            _initialise(binary, build / "data")
            (build / "READY").write_text(binary + "\n")
            shutil.rmtree(template, ignore_errors=True)
            os.rename(build, template)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return template


def _is_ready(template: Path) -> bool:
    # The system tables too: an older version marked an empty build ready.
    return (template / "READY").exists() and (template / "data" / "mysql").is_dir()


_INIT_TIMEOUT = 300.0  # seconds


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
    # Its own session, killed whole when anything (Ctrl-C too) stops the wait: the
    # installer is a script whose `mariadbd --bootstrap` would outlive a killed parent.
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=_INIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise DbleakError(
            f"initialising a datadir with {cmd[0]} took longer than {_INIT_TIMEOUT:g} s"
        ) from None
    except BaseException:
        kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise DbleakError(f"initialising a datadir with {cmd[0]} failed: {' | '.join(tail)}")
    if not (datadir / "mysql").is_dir():
        raise DbleakError(
            f"initialising a datadir with {cmd[0]} made no system tables in it: "
            "give the server binary with --dbleak-mysqld"
        )


def server_root(template: Path, prefix: str = "dbleak-", *, copy: bool = True) -> Path:
    """A fresh folder for one server: a tmp, and a copy of the template's datadir (unless
    the server's reaper makes it: `copy` false)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=session_parent()))
    try:
        if copy:
            shutil.copytree(template / "data", root / "data")
        (root / "tmp").mkdir()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def server_command(binary: str, root: Path, port: int) -> list[str]:
    """The server's command line, everything of it under root."""
    return [
        binary,
        "--no-defaults",
        f"--datadir={root / 'data'}",
        f"--socket={root / 'mysqld.sock'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={root / 'mysqld.pid'}",
        f"--log-error={root / 'error.log'}",
        f"--tmpdir={root / 'tmp'}",
        *_user_flags(),
        *_INNODB_FILES,
        *_FAST_FLAGS,
        *lock_info_flags(binary),
    ]


def launch_process(binary: str | None, cache: Path, timeout: float) -> Launch:
    """Copy the template and spawn mariadbd under its reaper; do not wait for it."""
    if binary is None:
        raise DbleakError("no mariadbd or mysqld found on PATH (or give --dbleak-mysqld)")
    template = ensure_template(binary, cache)
    root = server_root(template, copy=False)
    reaper: subprocess.Popen[str] | None = None
    notice = ReadyNotice(root)

    def cancel() -> None:
        with interrupts_held():  # a second Ctrl-C must not cut the clean-up short
            notice.close()
            stop_reaper(reaper)
            shutil.rmtree(root, ignore_errors=True)

    try:
        sock = str(root / "mysqld.sock")
        port = free_port()
        command = server_command(binary, root, port)
        reaped = spawn_under_reaper(
            root, command, notice.env(), copy=(template / "data", root / "data")
        )
        reaper = reaped.proc
    except BaseException:
        cancel()
        raise

    def wait() -> RunningServer:
        password = secrets.token_hex(16)
        try:
            pid = reaped.pid(timeout)
            wait_and_secure(sock, pid, password, timeout, root / "error.log", notice)
        except BaseException:
            cancel()
            raise
        finally:
            notice.close()
        endpoint = Endpoint("127.0.0.1", port, ADMIN_USER, password, unix_socket=sock)
        return RunningServer("process", endpoint, owned=True, stop=lambda: stop_reaper(reaper))

    return Launch(wait, cancel)


def start_process(binary: str | None, cache: Path, timeout: float) -> RunningServer:
    return launch_process(binary, cache, timeout).wait()


def wait_and_secure(
    sock: str,
    pid: int,
    password: str,
    timeout: float,
    errlog: Path,
    notice: ReadyNotice | None = None,
) -> None:
    """Wait for a real login, then replace the template's passwordless root. With a
    `notice`, the server's ready message ends each wait between two login attempts."""
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
            if not alive(pid):
                raise DbleakError(f"mariadbd/mysqld exited at start: {_log_tail(errlog)}") from None
            if time.monotonic() > deadline:
                raise DbleakError(
                    f"the server did not accept a login within {timeout:g} s: {_log_tail(errlog)}"
                ) from None
            if notice is not None and not notice.ready:
                notice.wait(delay)  # returns the moment the server says it is ready
            else:
                time.sleep(delay)  # no such word to come, or a login failed after it
            delay = min(delay * 1.5, 0.05)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{ADMIN_USER}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION")
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (password,))
    finally:
        conn.close()


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if "ERROR" in ln]
    except OSError:
        return "no error log"
    return lines[-1].split("[ERROR]", 1)[-1].strip() if lines else "no error in the log"
