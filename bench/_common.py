"""Shared helpers of the benchmark scripts: machine facts, medians, Markdown tables,
bounded subprocess runs, and clean-up of everything a script starts.

Every script keeps its files (test files, template caches, server datadirs, pytest
basetemps, bytecode) under one private work directory made by ``mkdtemp``. The servers
the scripts start therefore carry that path in their command line (``--datadir=...``),
so clean-up can find exactly *our* processes by that path and end them by pid, without
ever touching the machine's own MariaDB or anybody else's test servers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARIADBD = shutil.which("mariadbd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


# -- numbers and tables ------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f}"


def s(seconds: float, digits: int = 2) -> str:
    return f"{seconds:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the machine -------------------------------------------------------------------
def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "n/a"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def plugin_state() -> str:
    """The commit the plugin was measured at, and whether its files had local changes."""
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "pytest_dbleak"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return head
    changed = [line[3:] for line in out.splitlines() if line.strip()]
    return f"{head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine_table(extra: Sequence[tuple[str, str]] = ()) -> str:
    """The machine as a Markdown table (nproc, CPU, versions, load)."""
    rows = [
        ("nproc", _first_line(["nproc"])),
        ("CPU", _cpu_model()),
        ("Python", platform.python_version()),
        ("MariaDB", _first_line([MARIADBD, "--version"]) if MARIADBD else "mariadbd not found"),
        (
            "pytest / SQLAlchemy / PyMySQL",
            f"{_version('pytest')} / {_version('SQLAlchemy')} / {_version('PyMySQL')}",
        ),
        ("pytest-dbleak measured at", plugin_state()),
        ("load average (1/5/15 min) at start", load()),
        *extra,
    ]
    return table(("machine", ""), rows)


_LOADS: list[float] = []


def sample_load() -> None:
    """Remember the 1-min load average now (call once per round)."""
    with contextlib.suppress(OSError):
        _LOADS.append(os.getloadavg()[0])


def busy_note(start_load: str) -> str:
    """A line that says whether the machine was busy while the script ran."""
    sample_load()
    try:
        one = max(float(start_load.split()[0]), *_LOADS)
    except (ValueError, IndexError, OSError):
        return ""
    seen = f" (sampled once per round: {min(_LOADS):.2f} - {max(_LOADS):.2f})"
    cpus = os.cpu_count() or 1
    if one >= 0.5 * cpus:
        return (
            f"Note: the machine was busy (1-min load average up to {one:.2f} on {cpus} "
            f"CPUs{seen}, from other work): absolute timings are inflated and noisy; the "
            "alternatives were interleaved, so their ratios and differences are fairer "
            "than their absolute values."
        )
    return f"Load average stayed below {0.5 * cpus:.1f} on {cpus} CPUs{seen}."


# -- the work directory and clean-up ------------------------------------------------
def mariadbd_processes() -> list[str]:
    """`pgrep -a mariadbd`, one string per process."""
    out = subprocess.run(["pgrep", "-a", "mariadbd"], capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _processes_under(paths: Sequence[str]) -> list[tuple[int, str]]:
    """Processes whose command line mentions one of our private paths: ours."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in cmdline for p in paths):
            found.append((int(entry.name), cmdline.strip()))
    return found


class Workdir:
    """A private directory (plus optional extra roots, e.g. on /dev/shm) that is removed,
    with every process still running from it, when the script ends - also on Ctrl-C,
    SIGTERM, or an exception."""

    def __init__(self, name: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"dbleak-bench-{name}-"))
        self.roots: list[Path] = [self.path]
        # TMPDIR of every subprocess, so server datadirs land here. On /dev/shm when there
        # is one, as the plugin itself places them when TMPDIR is not set.
        if os.access("/dev/shm", os.W_OK):
            self.tmp = self.extra_root("/dev/shm", f"{name}-tmp")
        else:
            self.tmp = self.path / "tmp"
            self.tmp.mkdir()
        self.mariadbd_before = mariadbd_processes()
        self._closed = False
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_exit)

    def extra_root(self, parent: str, name: str) -> Path:
        root = Path(tempfile.mkdtemp(prefix=f"dbleak-bench-{name}-", dir=parent))
        self.roots.append(root)
        return root

    def env(self, *, pycache: bool = True, **extra: str) -> dict[str, str]:
        """Environment of a pytest subprocess: private TMPDIR, no autoloaded plugins."""
        env = dict(os.environ)
        env["TMPDIR"] = str(self.tmp)
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        env.pop("PYTEST_ADDOPTS", None)
        if pycache:
            # Bytecode as a normal install has it, kept in our work dir (not in the repo).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.path / "pycache")
        env.update(extra)
        return env

    def our_processes(self) -> list[tuple[int, str]]:
        return _processes_under([str(r) for r in self.roots])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        leftovers = self.our_processes()
        for pid, _ in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.our_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)
        if leftovers:
            print(
                f"\nWARNING: clean-up had to kill {len(leftovers)} leftover process(es):",
                file=sys.stderr,
            )
            for pid, cmd in leftovers:
                print(f"  {pid} {cmd[:160]}", file=sys.stderr)

    def report_cleanup(self) -> str:
        """Markdown lines: mariadbd processes before/after, none of ours left."""
        ours = [p for p in self.our_processes() if "mariadbd" in p[1] or "mysqld" in p[1]]
        after = mariadbd_processes()
        return (
            f"`pgrep -a mariadbd`: {len(self.mariadbd_before)} before, {len(after)} after "
            f"(the machine's own server and other people's test servers included); "
            f"servers of this script still running: {len(ours)}."
        )


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# -- bounded subprocess runs ------------------------------------------------------------
class RunFailed(RuntimeError):
    pass


def run(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    ok_codes: Sequence[int] = (0,),
) -> tuple[float, str]:
    """Run `cmd`; its wall time and output. Kills its process group on timeout."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RunFailed(f"timed out after {timeout:g} s: {' '.join(cmd)}\n{out[-2000:]}") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.perf_counter() - start
    if proc.returncode not in ok_codes:
        raise RunFailed(f"exit {proc.returncode}: {' '.join(cmd)}\n{out[-3000:]}")
    return wall, out


class Deadline:
    """The script's overall time budget: loops stop starting new runs once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.hit = False

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        if time.monotonic() >= self.end:
            self.hit = True
        return self.hit

    def note(self) -> str:
        return (
            f"\nWARNING: the time budget ({self.seconds:g} s) ran out; the tables use the "
            "runs that finished.\n"
            if self.hit
            else ""
        )


PYTEST = (sys.executable, "-m", "pytest")


# -- one-test sessions, phase by phase ------------------------------------------------
# A conftest that writes the wall-clock time of each phase of a one-test session to
# $BENCH_PHASES (wall clock, so that the parent's start and end times line up with them).
# The plugin's collection_finish hook (where it starts the server when it had to wait for
# the tests) runs before this conftest's, so collection ends at the last modifyitems hook
# and that hook's time shows up before the first test starts ("test_started").
PHASES_CONFTEST = """\
import json
import os
import time

import pytest

_T = {}


def _mark(name):
    _T.setdefault(name, time.time())


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    _mark("configured")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    _mark("session_started")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    _mark("collected")


def pytest_runtest_logstart(nodeid, location):
    _mark("test_started")


def pytest_runtest_logfinish(nodeid, location):
    _mark("tested")


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session):
    try:
        return (yield)
    finally:
        _mark("session_finished")


@pytest.hookimpl(wrapper=True)
def pytest_unconfigure(config):
    try:
        return (yield)
    finally:
        _mark("unconfigured")
        path = os.environ.get("BENCH_PHASES")
        if path:
            with open(path, "w") as f:
                json.dump(_T, f)
"""


def phase_spans(
    marks: dict[str, float], phases: Sequence[tuple[str, str]], started: float, wall: float
) -> dict[str, float]:
    """How long each of `phases` took, from the marks a PHASES_CONFTEST session wrote;
    a phase not marked folds into the next one that is."""
    marks = {**marks, "exit": started + wall}
    previous, spans = started, {}
    for key, _ in phases:
        if key in marks:
            spans[key] = marks[key] - previous
            previous = marks[key]
    return spans
