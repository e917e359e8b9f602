"""Who holds a TCP port: the socket tables of /proc/net, read once per question.

Used before a start (is the port free, and if not, who holds it, in words an operator can
act on) and by the Ray nodes' readiness check (is anything listening).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.ports.processes.proc import all_pids, comm

__all__ = [
    "ANY_V4",
    "TcpSocket",
    "check_port_free",
    "is_listening",
    "port_holders",
    "probe_host",
    "tcp_sockets",
    "wait_port_free",
    "who_holds_port",
]

log = logging.getLogger(__name__)

ANY_V4 = "0.0.0.0"  # noqa: S104 (a value to compare and test-bind, not a listen address)
_WILDCARDS = frozenset({"", ANY_V4, "::", "*"})
_TCP_LISTEN = "0A"
_TCP_TIME_WAIT = "06"
_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/net/tcp{,6} whose local port is the one asked about."""

    inode: int  # 0 for sockets no process owns (TIME_WAIT)
    state: str  # the kernel's hex state: 0A listen, 06 time wait, 01 established, ...

    @property
    def listening(self) -> bool:
        return self.state == _TCP_LISTEN

    @property
    def time_wait(self) -> bool:
        return self.state == _TCP_TIME_WAIT


def tcp_sockets(port: int) -> list[TcpSocket]:
    """Every TCP socket (v4 and v6) bound to local `port` in this net namespace."""
    found: list[TcpSocket] = []
    for table in _TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                inode = int(fields[9])
            except (IndexError, ValueError):
                continue
            if local_port == port:
                found.append(TcpSocket(inode, fields[3]))
    return found


def is_listening(port: int) -> bool:
    """Is any TCP socket listening on `port` (any address) in this net namespace?"""
    return any(s.listening for s in tcp_sockets(port))


def port_holders(port: int, sockets: list[TcpSocket] | None = None) -> list[int]:
    """Pids holding a socket bound to `port`, listeners first (inode lookup over /proc/*/fd)."""
    entries = [s for s in (tcp_sockets(port) if sockets is None else sockets) if s.inode]
    if not entries:
        return []
    rank = {f"socket:[{s.inode}]": (0 if s.listening else 1) for s in entries}
    holders: dict[int, int] = {}
    for pid in all_pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in rank:
                holders[pid] = min(holders.get(pid, 9), rank[target])
    return sorted(holders, key=lambda p: (holders[p], p))


def who_holds_port(port: int) -> str:
    """'pid 123 (nginx)' (up to three holders), a closed connection in TIME_WAIT, or 'an
    unknown process'."""
    sockets = tcp_sockets(port)
    pids = port_holders(port, sockets)
    if not pids:
        # No process owns a TIME_WAIT connection. If its socket lacked SO_REUSEADDR (e.g.
        # an outgoing connection that got `port` as its ephemeral port), it blocks binding
        # `port` until it expires.
        if any(s.time_wait for s in sockets):
            return (
                "a closed connection in TIME_WAIT (no process; it expires within 60s; "
                "engine ports inside the ephemeral range "
                "/proc/sys/net/ipv4/ip_local_port_range are prone to this)"
            )
        return "an unknown process"
    shown = ", ".join(f"pid {p} ({comm(p)})" for p in pids[:3])
    return shown + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")


def check_port_free(host: str | None, port: int) -> str | None:
    """None if `port` can be bound on `host` (all addresses when None); else why not.

    Binds a throwaway socket with SO_REUSEADDR, as the servers we start do: on Linux that
    still fails while anyone listens on the port (same or wildcard address) but ignores
    TIME_WAIT leftovers of a server that just stopped.
    """
    addr = ANY_V4 if host is None or host in _WILDCARDS - {"::"} else host
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is taken by {who_holds_port(port)}"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"address {addr} is not configured on this host"
            return f"port {port} on {addr}: {exc.strerror or exc}"
    return None


def probe_host(host: str | None) -> str:
    """Where to reach a server that bound `host` (a wildcard is reached on loopback)."""
    if host is None or host in ("", ANY_V4, "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def wait_port_free(host: str | None, port: int, timeout: float = 3.0) -> bool:
    """After a stop: wait until `port` can be bound again. True also when a process holds
    it (all of ours are gone by then: a stranger, and the next start will say so); False
    when it stays blocked with no holder (e.g. a connection of ours still closing)."""
    if port == 0:
        return True
    deadline = time.monotonic() + timeout
    while True:
        taken = check_port_free(host, port)
        if taken is None or taken.startswith("address "):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if port_holders(port):
        log.warning("port taken by another process after stop", extra={"detail": taken})
        return True
    log.error("port still taken after stop", extra={"detail": taken})
    return False
