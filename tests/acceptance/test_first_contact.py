"""What a newcomer meets (issue 23): nothing left running or poisoned, and every error one
line that names the fix (exit 4, no traceback).

Each inner pytest is a real run against a real server binary; the Ctrl-C tests send a
real SIGINT to the inner run's process group, as a terminal does, from a subprocess
bounded by a timeout so that they cannot hang the outer run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.settings import OPTIONS
from pytest_dbleak.families.mysql.embedded import ensure_template, find_mysqld, template_key
from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, all_output

MARIADBD = find_mysqld(os.environ.get("DBLEAK_MYSQLD") or None)
needs_server = pytest.mark.skipif(MARIADBD is None, reason="needs mariadbd or mysqld")

ONE_TEST = "def test_it(dbleak_mysql_url):\n    pass\n"


def _usage_error(result: pytest.RunResult) -> str:
    """The one `ERROR: dbleak: ...` line of a run that stopped on bad input."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, all_output(result)
    text = all_output(result)
    assert "Traceback" not in text, text
    assert "INTERNALERROR" not in text, text
    errors = [line for line in result.stderr.lines if line.startswith("ERROR: dbleak:")]
    assert len(errors) == 1, text
    return errors[0]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# -- 1. any server binary the user names is checked before use ---------------------------
@needs_server
def test_a_wrapper_script_that_starts_the_server_in_the_background_is_refused_and_nothing_runs(
    pytester: pytest.Pytester,
) -> None:
    # What mysqld_safe does: start the real server as its own child and stay around.
    wrapper = pytester.path / "mysqld_wrapper"
    wrapper.write_text(f'#!/bin/sh\n"{MARIADBD}" "$@" &\nwait\n')
    wrapper.chmod(0o755)
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", f"--dbleak-mysqld={wrapper}", *ONLY_DBLEAK
    )
    line = _usage_error(result)
    assert "is a script (a wrapper such as mysqld_safe), not the server" in line
    assert "--dbleak-mysqld=" in line  # the fix: which binary to give instead
    assert not _processes_mentioning(str(pytester.path)), "a server outlived the run"


@pytest.mark.parametrize("name", ["mysqld_safe", "mariadbd-safe"])
def test_the_real_mysqld_safe_is_refused_without_being_run(
    pytester: pytest.Pytester, name: str
) -> None:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", f"--dbleak-mysqld={path}", *ONLY_DBLEAK
    )
    assert "is a script" in _usage_error(result)


@pytest.mark.parametrize("name", ["mariadb", "mysql"])
def test_the_client_given_where_the_server_is_needed_says_so(
    pytester: pytest.Pytester, name: str
) -> None:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"the {name} client is not installed")
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak", "--dbleak-backend=process", f"--dbleak-mysqld={path}", *ONLY_DBLEAK
    )
    line = _usage_error(result)
    assert f"{path} is a client or tool, not the server" in line
    assert "Distrib" in line or "Ver" in line  # what it said it is
    assert "--dbleak-mysqld=" in line


def test_a_binary_that_is_no_server_is_refused_and_leaves_no_template(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pytester.makepyfile(test_it=ONE_TEST)
    for _ in range(2):  # and the second run says the same, not a poisoned cache's error
        result = pytester.runpytest_subprocess(
            "--dbleak",
            "--dbleak-backend=process",
            "--dbleak-mysqld=/bin/true",
            f"--dbleak-cache-dir={cache}",
            *ONLY_DBLEAK,
        )
        line = _usage_error(result)
        assert "/bin/true is not a MySQL or MariaDB server" in line
    assert not cache.exists() or not list(cache.glob("template-*"))


def test_a_template_build_that_makes_no_datadir_leaves_nothing_marked_ready(
    tmp_path: Path,
) -> None:
    # /bin/true "succeeds" at initialising: exit 0, no system tables. Called directly,
    # past the binary check, as a broken server package would be.
    cache = tmp_path / "cache"
    with pytest.raises(DbleakError, match="made no system tables"):
        ensure_template("/bin/true", cache)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == []


@needs_server
def test_a_template_an_older_version_marked_ready_without_data_is_rebuilt(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    assert MARIADBD is not None
    cache = tmp_path / "cache"
    poisoned = cache / f"template-{template_key(MARIADBD)}"
    poisoned.mkdir(parents=True)
    (poisoned / "READY").write_text("/bin/true\n")
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=process",
        f"--dbleak-mysqld={MARIADBD}",
        f"--dbleak-cache-dir={cache}",
        *ONLY_DBLEAK,
    )
    result.assert_outcomes(passed=1)
    assert (poisoned / "data" / "mysql").is_dir()


# -- Ctrl-C at any moment, start-up included ----------------------------------------------
WAITS = "import time\n\ndef test_waits(dbleak_mysql_url):\n    time.sleep(60)\n"


def _interrupt_once(
    directory: Path, cache: Path, trigger: Callable[[Path], bool], delay: float
) -> tuple[int | None, str, list[str], list[str]]:
    """One inner run, Ctrl-C'd (SIGINT to its process group) `delay` s after `trigger`
    sees its first sign; its exit status, output, and what it left in TMPDIR and running."""
    # A short TMPDIR: the server's unix socket path must stay under 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="dbl-"))
    try:
        return _interrupt_in(directory, tmp, cache, trigger, delay)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _interrupt_in(
    directory: Path, tmp: Path, cache: Path, trigger: Callable[[Path], bool], delay: float
) -> tuple[int | None, str, list[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(TMPDIR=str(tmp), PY_COLORS="0", DBLEAK_CACHE_DIR=str(cache))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", *ONLY_DBLEAK, "-p", "no:randomly"),
            *("--dbleak", "--dbleak-backend=process", "test_waits.py"),
        ],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: the signal reaches it as a terminal's would
    )
    try:
        _wait_for(lambda: trigger(tmp) or proc.poll() is not None, 120, "the start-up")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    # The reaper removes the datadir once it has stopped the server: wait for that event.
    with_procs = lambda: _processes_mentioning(str(tmp))  # noqa: E731
    with contextlib.suppress(AssertionError):  # reported by the caller, with what is left
        _wait_for(lambda: not with_procs() and not os.listdir(tmp), 30, "the clean-up")
    return proc.returncode, out, os.listdir(tmp), with_procs()


def _appeared(prefix: str) -> Callable[[Path], bool]:
    return lambda tmp: any(name.startswith(prefix) for name in os.listdir(tmp))


# Two moments of start-up, each in steps: from the moment the session's datadir appears
# (the server boots while SQLAlchemy is imported), and from the moment the tracker's
# folder for child processes appears (the plugin waits for the server's first login).
MOMENTS = [("datadir", "dbleak-", step * 0.05) for step in range(6)] + [
    ("children", "dbleak-children-", step * 0.03) for step in range(6)
]


@needs_server
def test_ctrl_c_during_start_up_again_and_again_leaves_no_folder_no_process_no_error(
    pytester: pytest.Pytester,
) -> None:
    from tests.acceptance.helpers import TEMPLATE_CACHE

    pytester.makepyfile(test_waits=WAITS)
    for what, prefix, delay in MOMENTS:
        ret, out, left, running = _interrupt_once(
            pytester.path, Path(TEMPLATE_CACHE), _appeared(prefix), delay
        )
        when = f"after Ctrl-C at {what} +{delay:.2f} s:\n{out}"
        assert left == [], when
        assert running == [], when
        assert ret == pytest.ExitCode.INTERRUPTED, when
        assert "INTERNALERROR" not in out, when
        assert "Unraisable" not in out, when
        assert "Traceback" not in out, when


@needs_server
@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6])
def test_ctrl_c_while_the_template_is_built_leaves_nothing_marked_ready(
    pytester: pytest.Pytester, tmp_path: Path, delay: float
) -> None:
    pytester.makepyfile(test_waits=WAITS)
    cache = tmp_path / "cache"
    cache.mkdir()
    building = lambda _tmp: any(p.name.startswith("building-") for p in cache.iterdir())  # noqa: E731
    ret, out, left, running = _interrupt_once(pytester.path, cache, building, delay)
    assert ret == pytest.ExitCode.INTERRUPTED, out
    assert left == [], out
    assert running == [], out
    assert not _processes_mentioning(str(cache)), "the template build outlived the run"
    assert not [p for p in cache.iterdir() if p.name.startswith("building-")]
    for template in cache.glob("template-*"):  # only a complete one, if it finished
        assert (template / "READY").exists()
        assert (template / "data" / "mysql").is_dir()


# -- 2. every error names the fix -------------------------------------------------------
def test_the_docker_backend_without_its_extra_names_the_pip_command_not_the_daemon(
    pytester: pytest.Pytester,
) -> None:
    # As on a machine where the extra was never installed: the import fails.
    pytester.makeconftest('import sys\nsys.modules["testcontainers"] = None\n')
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=docker", *ONLY_DBLEAK)
    line = _usage_error(result)
    assert "pip install 'pytest-dbleak[docker]'" in line
    assert "daemon" not in line


def test_the_docker_backend_without_a_daemon_says_to_start_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("testcontainers")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-daemon.sock'}")
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess("--dbleak", "--dbleak-backend=docker", *ONLY_DBLEAK)
    line = _usage_error(result)
    assert "needs a running Docker daemon; none answered: start Docker" in line


@pytest.mark.parametrize(
    ("given", "how", "meant"),
    [
        ("proces", "--dbleak-backend=proces", "process"),
        ("dokcer", "env", "docker"),
    ],
)
def test_a_misspelt_backend_gets_the_nearest_choice(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, given: str, how: str, meant: str
) -> None:
    args = [how] if how.startswith("--") else []
    if how == "env":
        monkeypatch.setenv("DBLEAK_BACKEND", given)
    pytester.makepyfile(test_it=ONE_TEST)
    result = pytester.runpytest_subprocess("--dbleak", *args, *ONLY_DBLEAK)
    line = _usage_error(result)
    assert f"unknown backend {given!r}; did you mean {meant!r}? choose one of" in line
    if how == "env":
        assert "environment variable DBLEAK_BACKEND" in line


def test_an_unanswering_host_says_it_timed_out_and_which_option_sets_the_wait(
    pytester: pytest.Pytester,
) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepted by the kernel, never greeted: the wait expires
        port = listener.getsockname()[1]
        pytester.makepyfile(test_it=ONE_TEST)
        result = pytester.runpytest_subprocess(
            "--dbleak",
            "--dbleak-backend=url",
            f"--dbleak-mysql-url=mysql://u:pw@127.0.0.1:{port}",
            "--dbleak-startup-timeout=1",
            *ONLY_DBLEAK,
            timeout=60,
        )
    line = _usage_error(result)
    assert f"127.0.0.1:{port} cannot be reached: timed out after 1 s" in line
    assert "--dbleak-startup-timeout" in line


LEAKY = (
    PREAMBLE
    + """

def test_leaks(dbleak_mysql_url):
    KEEP.append(pymysql.connect(**connect_args(dbleak_mysql_url)))  # LEAK


def test_clean(dbleak_mysql_url):
    pymysql.connect(**connect_args(dbleak_mysql_url)).close()
"""
)


def test_the_written_report_files_are_named_at_the_end_of_the_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_it=LEAKY)
    result = pytester.runpytest_subprocess(
        "--dbleak", FAST, "--dbleak-report=out/r.json", "--dbleak-html=out/r.html", *ONLY_DBLEAK
    )
    tail = result.stdout.lines[-6:]
    assert "dbleak: JSON report written to out/r.json" in tail, result.stdout.str()
    assert "dbleak: HTML report written to out/r.html" in tail, result.stdout.str()
    assert json.loads((pytester.path / "out" / "r.json").read_text())
    assert (pytester.path / "out" / "r.html").stat().st_size > 0


def test_a_baseline_whose_leaks_are_gone_says_how_to_re_record_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_it=LEAKY)
    recording = pytester.runpytest_subprocess(
        "--dbleak", FAST, "--dbleak-baseline=leaks.json", *ONLY_DBLEAK
    )
    recording.stdout.fnmatch_lines(["*baseline: recorded 1 leaking test*leaks.json*"])
    pytester.makepyfile(test_it=LEAKY.replace("KEEP.append(", "("))  # the leak is fixed
    fixed = pytester.runpytest_subprocess(
        "--dbleak", FAST, "--dbleak-baseline=leaks.json", *ONLY_DBLEAK
    )
    fixed.assert_outcomes(passed=2)
    fixed.stdout.fnmatch_lines(
        [
            "baseline: * 1 gone: *test_leaks*; to shrink the baseline, delete leaks.json and run "
            "again to re-record it"
        ]
    )


def test_help_names_each_options_environment_variable_and_ini_name(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest_subprocess("--help", *ONLY_DBLEAK)
    text = re.sub(r"\s+", " ", result.stdout.str())
    for spec in OPTIONS:
        assert spec.flag in text
        assert f"[env {spec.env}, ini {spec.ini}]" in text, spec.name
