"""Run the real commands in child processes: ``flask --app reference_app ...``
and ``python -m reference_app``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from .config import child_environment

ROOT = Path(__file__).resolve().parents[2]
_RUNNING_ON = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


def command_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["DATABASE_URL"] = database_url
    env.update(child_environment())
    env.update(extra)
    return env


def flask(database_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "reference_app", *args],
        cwd=ROOT,
        env=command_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class ServerProcess:
    """``python -m reference_app --port 0`` (or ``port``); its output, its URL, a clean stop."""

    def __init__(
        self, env: dict[str, str], *args: str, port: int = 0, module: str = "reference_app"
    ) -> None:
        self.env = env
        self.args = args
        self.port = port
        self.module = module
        self.lines: list[str] = []
        self.url: str | None = None
        self._changed = threading.Condition()
        self._ended = False  # the output reached its end: the process is exiting
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="server-output", daemon=True)
        self._reader.start()
        with self._changed:
            self._changed.wait_for(lambda: self.url is not None or self._ended, timeout=timeout)
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        with self._process.stdout as stream:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    match = _RUNNING_ON.search(line)
                    if match and self.url is None:
                        self.url = match.group(1)
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_line(self, needle: str, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: needle in self.output, timeout=timeout)

    @property
    def address(self) -> str:
        """The URL of a started server."""
        assert self.url is not None, self.output
        return self.url

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Ask the server to stop; its exit status (it is killed if it hangs)."""
        process = self._process
        assert process is not None
        if process.poll() is None:
            process.send_signal(sig)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.returncode is None:
            self.stop()
