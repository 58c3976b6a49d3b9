"""Whether the client end of a server connection on this machine is still open.

A server row can outlive its client's close for a moment: the client sent its goodbye
and shut its socket, the server has not read it yet. Rather than waiting for the row to
go, the kernel's socket table answers at once: the client's socket (its port is in the
processlist's ``host:port``) is ``ESTABLISHED`` while the client holds the connection,
and in a closing state (``FIN_WAIT``, ``TIME_WAIT``, ...) once it let go.

Linux only (``/proc/net/tcp``, ``tcp6``); elsewhere, for a Unix-socket connection, or a
client on another machine, the answer is None and the caller decides as before.

No pytest import.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"
_LISTEN = "0A"


def client_port(host: str) -> int | None:
    """The client port of a processlist ``host`` (``127.0.0.1:54321``, ``[::1]:54321``)."""
    _, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        return None  # "localhost": a Unix socket
    return int(port)


def tcp_sockets() -> Iterator[tuple[int, int, str, int]]:
    """Every TCP socket of this machine's network namespace, from the kernel's tables:
    (local port, remote port, state, inode); nothing where there is no procfs."""
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                lport = int(fields[1].rpartition(":")[2], 16)
                rport = int(fields[2].rpartition(":")[2], 16)
                inode = int(fields[9])
            except ValueError:
                continue
            yield lport, rport, fields[3], inode


def client_states(ports: set[int], server_port: int) -> dict[int, bool]:
    """For each of `ports` this machine has a client socket for (remote end on
    `server_port`): True while it is established, False once it is closing."""
    if not ports:
        return {}
    found: dict[int, bool] = {}
    for lport, rport, state, _inode in tcp_sockets():
        if lport in ports and rport == server_port and state != _LISTEN:
            found[lport] = found.get(lport, False) or state == _ESTABLISHED
    return found
