"""What the docker backends of every family share: a container published on loopback,
reaped, and awaited with a real login.

No pytest import, no family. A family's containers module builds its testcontainers
class (with the variables its images expect) and says how to log in; ``start`` does the
rest. What it uses of testcontainers beyond the constructor and ``start`` - the port map,
the readiness hook, Ryuk's switch - is in ``publish()`` and
``_disable_unavailable_ryuk()``, checked on testcontainers 4.15; ``publish()`` fails
loudly when the port map or the hook are not where they were.

No orphans: a reaper process is started before the container is created, and removes
it when pytest ends in any way (exit, Ctrl-C, SIGKILL) - the process backend's mechanism,
EOF on a pipe only pytest holds. Ryuk, where it runs, watches the container as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pytest_dbleak.engine.errors import DbleakError, missing_extra
from pytest_dbleak.engine.signals import keep_out_of_forks
from pytest_dbleak.families._process import wait_child

log = logging.getLogger(__name__)

LABEL = "org.pytest-dbleak.pid"  # value: the pid of the pytest that started the container
CHECKED_ON = "testcontainers 4.15"

E = TypeVar("E")  # a family's endpoint


class ImageUnavailable(DbleakError):
    """The daemon answered, but the image is not on this machine and cannot be pulled."""


def docker_available() -> bool:
    """True when a Docker daemon answers a ping within a second."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False  # the usual case without Docker: skip importing the SDK
    try:
        import docker  # testcontainers' dependency
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=1)
    except Exception:  # noqa: BLE001 - no socket, no config: no daemon
        return False
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - the daemon did not answer
        return False
    finally:
        client.close()


def loopback_daemon() -> bool:
    """The daemon runs on this machine (unix socket): its published ports are ours."""
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def ensure_image(image: str, timeout: float, option: str | None = None) -> None:
    """The image is present locally, or pulled now; ImageUnavailable says why not.

    `option`: the setting that names the image, said in the error.
    """
    import docker

    client = docker.from_env(timeout=max(5, int(timeout)))
    try:
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            client.images.pull(image)
        except docker.errors.DockerException as exc:
            hint = f" ({option} names another)" if option else ""
            raise ImageUnavailable(
                f"the image {image} is not on this machine and cannot be pulled: "
                f"{one_line(exc)}{hint}"
            ) from None
    finally:
        client.close()


# The reaper gets the container's name before the container exists. "created" on its
# stdin means the container was created; EOF means pytest ended. It then removes the
# container; without "created", a create may still be in flight in the daemon, so it
# watches for the name a little longer.
_REAPER = r"""
import sys, time
import docker
name = sys.argv[1]
created = False
for line in sys.stdin:
    created = created or line.strip() == "created"
client = docker.from_env(timeout=60)
deadline = time.monotonic() + (0 if created else 10)
while True:
    try:
        client.containers.get(name).remove(force=True, v=True)
        break
    except docker.errors.NotFound:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
"""


class Reaper:
    """Removes the named container when pytest ends, however it ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-c", _REAPER, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
        )
        keep_out_of_forks(self._proc.stdin)

    def created(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write("created\n")
                proc.stdin.flush()

    def release(self, timeout: float = 60) -> None:
        """Remove the container now and wait until it is gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            wait_child(proc, timeout)
        except subprocess.TimeoutExpired:
            log.warning("dbleak: the reaper of container %s did not finish", self.name)


def publish(container: Any, cls: type, port: int, name: str) -> Any:
    """The testcontainers `container` (of class `cls`), named, labelled with this pytest's
    pid, its `port` published on 127.0.0.1 at a random port (on a daemon of this machine).

    The seam: ``ports`` (the port map passed to the Docker SDK) and ``_connect`` (the
    readiness hook DbContainer.start calls, which the family's class overrides with
    nothing: readiness is its own login, bounded by --dbleak-startup-timeout) are
    testcontainers internals.
    """
    ports = getattr(container, "ports", None)
    if not isinstance(ports, dict) or str(port) not in ports or not hasattr(cls, "_connect"):
        raise DbleakError(
            f"this testcontainers version does not fit pytest-dbleak (checked on {CHECKED_ON})"
        )
    if loopback_daemon():
        ports[str(port)] = ("127.0.0.1", None)  # a random port, on loopback only
    container.with_name(name)
    container.with_kwargs(labels={LABEL: str(os.getpid())})
    return container


def no_testcontainers() -> DbleakError:
    return DbleakError(
        "the docker backend needs testcontainers: pip install 'pytest-dbleak[docker]'"
    )


def _disable_unavailable_ryuk() -> str | None:
    """Ryuk is honoured where it runs; where it cannot start, our reaper is enough.

    Returns a note for the terminal when Ryuk was wanted but could not start.
    """
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return None
    try:
        from testcontainers.core.container import Reaper as Ryuk

        Ryuk.get_instance()
    except Exception as exc:  # noqa: BLE001 - image pull or socket errors vary
        config.ryuk_disabled = True
        return f"Ryuk did not start ({one_line(exc)}); the plugin's reaper removes the container"
    return None


def _require_docker() -> None:
    """The extra's modules are installed and a daemon answers; else DbleakError."""
    try:
        import docker  # noqa: F401 - the extra's modules, before asking for a daemon
        import testcontainers  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, "docker", "the docker backend")
        if missing is None:
            raise
        raise DbleakError(missing) from None
    if not docker_available():
        raise DbleakError(
            "the docker backend needs a running Docker daemon; none answered: start "
            "Docker, or choose another backend (--dbleak-backend=process or url)"
        )


def start(
    image: str,
    timeout: float,
    *,
    option: str,
    port: int,
    build: Callable[[str], Any],
    login: Callable[[str, int, Any, float], E],
) -> tuple[E, Callable[[], None], list[str]]:
    """A running container whose server took a real login; how to stop it; notes.

    `option` names the image's setting; `port` is the server's port in the container;
    `build(name)` gives the testcontainers container, through ``publish``;
    `login(host, port, container, deadline)` waits for a login and returns the endpoint.
    """
    _require_docker()
    deadline = time.monotonic() + timeout
    ensure_image(image, timeout, option)
    name = f"dbleak-{secrets.token_hex(6)}"
    container = build(name)
    reaper = Reaper(name)
    try:
        notes = [note] if (note := _disable_unavailable_ryuk()) else []
        try:
            container.start()
        finally:
            reaper.created()  # also after a failed start: the name may exist
        # Published on loopback: connect there, not to the bridge gateway testcontainers
        # would report (TESTCONTAINERS_HOST_OVERRIDE is not needed for our connections).
        host = "127.0.0.1" if loopback_daemon() else container.get_container_host_ip()
        endpoint = login(host, int(container.get_exposed_port(port)), container, deadline)
    except DbleakError:
        reaper.release()
        raise
    except Exception as exc:  # noqa: BLE001 - Docker SDK errors vary by version
        reaper.release()
        raise DbleakError(f"the {image} container did not start: {one_line(exc)}") from None
    except BaseException:  # Ctrl-C while starting: the container goes too
        reaper.release()
        raise
    return endpoint, reaper.release, notes


def wait_for_login(
    attempt: Callable[[], str | None],
    container: Any,
    image: str,
    deadline: float,
    timeout: float,
) -> None:
    """Until `attempt()` logs in (returns None; else the reason it could not), the
    container exits, or the deadline passes; DbleakError in one line for the last two."""
    delay = 0.01
    while True:
        reason = attempt()
        if reason is None:
            return
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = wrapped.logs(tail=3).decode(errors="replace").strip().splitlines()
            raise DbleakError(
                f"the {image} container exited at start: {logs[-1] if logs else 'no log'}"
            )
        if time.monotonic() > deadline:
            raise DbleakError(
                f"the {image} container did not accept a login within {timeout:g} s: {reason}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def one_line(exc: BaseException) -> str:
    # The Docker SDK's APIError says what the daemon said in `explanation`.
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
