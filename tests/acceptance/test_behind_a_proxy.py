"""A server reached through a TCP proxy: Docker's published port, a sidecar forwarder.

The server then lists the proxy's outgoing address and port for every client, not the
client's. The check reads the kernel's socket table to tell a connection whose client
has let go (a row the server has not dropped yet) from one still open; a socket of this
machine that happens to carry the proxy's port number must not answer for it. Seen once
on the docker backend under `-n 2`: a leaked connection was taken for one being closed,
because a closed client socket of the test process had the number of the proxy's port.

Here the proxy is a forwarder on 127.0.0.1 whose outgoing connections leave from
127.0.0.2, in front of a private MariaDB (the process backend's), used through the url
backend; the leaky test closes a socket of its own bound to the very port number the
server lists for its leaked connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from pytest_dbleak import families
from pytest_dbleak.engine.errors import DbleakError, Redactor
from pytest_dbleak.engine.settings import Settings
from tests.acceptance.helpers import FAST, ONLY_DBLEAK, PREAMBLE, failure_of, line_of

SOURCE = "127.0.0.2"  # where the forwarder's connections to the server come from


class Forwarder:
    """Relays every connection to 127.0.0.1:<port> to `target`, from SOURCE."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, source_address=(SOURCE, 0))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        # One side let go: pass the close on, as a proxy does.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture
def proxied_admin_url() -> Iterator[str]:
    """The admin URL of a private MariaDB, through a forwarder."""
    try:
        with socket.create_connection(("127.0.0.1", 1), source_address=(SOURCE, 0)):
            pass
    except ConnectionRefusedError:
        pass  # 127.0.0.2 is usable as a source address here
    except OSError as exc:
        pytest.skip(f"{SOURCE} is not a usable source address here: {exc}")
    family = families.get("mysql")
    try:
        running = family.launch(Settings(backend="process"), Redactor()).wait()
    except DbleakError as exc:
        pytest.skip(f"no MariaDB server to start here: {exc}")
    endpoint = running.endpoint
    forwarder = Forwarder((endpoint.host, endpoint.port))
    try:
        yield f"mysql://{endpoint.user}:{endpoint.password}@127.0.0.1:{forwarder.port}/"
    finally:
        forwarder.close()
        running.stop()


BEHIND_A_PROXY = '''
import socket


def connect(url):
    return pymysql.connect(**connect_args(url))  # LEAK-proxied


def close_a_socket_with_the_listed_port(conn, url):
    """A socket of ours to the server's address from the port number the server lists
    for `conn` (the proxy's), closed at once: it lingers in a closing state."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        host = cursor.fetchone()[0]
    assert host.startswith("127.0.0.2:"), host
    u = sa.engine.make_url(url)
    ours = socket.socket()
    ours.bind(("127.0.0.1", int(host.rpartition(":")[2])))
    ours.connect((u.host, u.port))
    ours.close()


def test_leaky_connection_behind_a_proxy(dbleak_mysql_url):
    conn = connect(dbleak_mysql_url)
    KEEP.append(conn)
    close_a_socket_with_the_listed_port(conn, dbleak_mysql_url)


def test_clean_connection_behind_a_proxy(dbleak_mysql_url):
    conn = connect(dbleak_mysql_url)
    close_a_socket_with_the_listed_port(conn, dbleak_mysql_url)
    conn.close()
'''


def test_a_connection_leaked_behind_a_proxy_fails_even_when_a_closed_socket_has_its_port(
    pytester: pytest.Pytester, proxied_admin_url: str
) -> None:
    pytester.makepyfile(test_proxy=PREAMBLE + BEHIND_A_PROXY)
    result = pytester.runpytest_subprocess(
        "--dbleak",
        "--dbleak-backend=url",
        f"--dbleak-mysql-url={proxied_admin_url}",
        FAST,
        *ONLY_DBLEAK,
    )

    result.assert_outcomes(failed=1, passed=1)
    line = line_of(PREAMBLE + BEHIND_A_PROXY, "# LEAK-proxied")
    failure_of(result, "test_leaky_connection_behind_a_proxy").fnmatch_lines(
        [
            f"dbleak: 1 connection leaked (1 server_connection) at test_proxy.py:{line}",
            "*server connection * (*@127.0.0.2:*, Sleep) opened during the test and still open*",
        ]
    )
    # The password of the admin URL is never printed.
    assert proxied_admin_url.split(":")[2].split("@")[0] not in result.stdout.str()
