"""--dbleak-startup-timeout bounds the url backend's first login too (the docker
backend's is in test_docker_backend.py, the process backend's in its own tests)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.acceptance.helpers import ONLY_DBLEAK, all_output


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A real listening socket on loopback that never sends a server greeting: what a
    server that is still starting, or a stuck proxy, looks like to a client."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody ever answers
        yield listener.getsockname()[1]


def test_a_url_server_that_never_greets_is_a_usage_error_after_the_startup_timeout(
    pytester: pytest.Pytester, silent_port: int
) -> None:
    pytester.makepyfile(test_it="def test_it(dbleak_mysql_url):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url=mysql://u:s3cret@127.0.0.1:{silent_port}",
        "--dbleak-startup-timeout=1",
        *ONLY_DBLEAK,
        timeout=60,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # It gave up on the greeting at the startup timeout (1 s), which the message names,
    # not at PyMySQL's 30 s read timeout (that message names no timeout).
    result.stderr.fnmatch_lines(
        [
            f"ERROR: dbleak: MySQL server at 127.0.0.1:{silent_port} cannot be reached: "
            "timed out after 1 s (--dbleak-startup-timeout*"
        ]
    )
    assert "Traceback" not in all_output(result)
    assert "s3cret" not in all_output(result)
