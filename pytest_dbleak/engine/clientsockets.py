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

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_ESTABLISHED = "01"
_LISTEN = "0A"


@dataclass(frozen=True)
class Client:
    """The client end of a server connection, as the server lists it (``host:port``).

    ``address`` is None where the server names the client instead (``localhost:54321``
    with name resolution on): then only the port is compared. Where it is an address it
    must match too: behind a port proxy (Docker's) the server lists the proxy's outgoing
    address and port, and a port of our own closed client to the proxy can carry the
    same number - a leaked connection then read as one whose client had let go.
    """

    address: str | None
    port: int

    def matches(self, sock: TcpSocket, server_port: int) -> bool:
        return (
            sock.lport == self.port
            and sock.rport == server_port
            and sock.state != _LISTEN
            and (self.address is None or self.address == sock.laddr)
        )


@dataclass(frozen=True)
class TcpSocket:
    """One row of the kernel's socket table."""

    laddr: str
    lport: int
    rport: int
    state: str
    inode: int


def client_of(host: str) -> Client | None:
    """The client of a processlist ``host`` (``127.0.0.1:54321``, ``[::1]:54321``,
    ``::1:54321``); None for a Unix socket (``localhost``)."""
    head, sep, port = host.rpartition(":")
    if not sep or not head or not port.isdigit():
        return None
    return Client(_normalised(head.strip("[]")), int(port))


def _normalised(text: str) -> str | None:
    """An address as one spelling (an IPv4-mapped IPv6 address as IPv4); None for a name."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _table_address(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in the kernel's (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _normalised(str(ipaddress.ip_address(ordered))) or ""


def tcp_sockets() -> Iterator[TcpSocket]:
    """Every TCP socket of this machine's network namespace, from the kernel's tables;
    nothing where there is no procfs."""
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
                laddr, _, lport = fields[1].rpartition(":")
                yield TcpSocket(
                    _table_address(laddr),
                    int(lport, 16),
                    int(fields[2].rpartition(":")[2], 16),
                    fields[3],
                    int(fields[9]),
                )
            except ValueError:
                continue


def client_states(clients: set[Client], server_port: int) -> dict[Client, bool]:
    """For each of `clients` this machine has a socket for (remote end on `server_port`):
    True while it is established, False once it is closing."""
    if not clients:
        return {}
    by_port: dict[int, list[Client]] = {}
    for client in clients:
        by_port.setdefault(client.port, []).append(client)
    found: dict[Client, bool] = {}
    for sock in tcp_sockets():
        for client in by_port.get(sock.lport, ()):
            if client.matches(sock, server_port):
                found[client] = found.get(client, False) or sock.state == _ESTABLISHED
    return found
