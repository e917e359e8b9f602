"""sd_notify(3) without a dependency: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

`Notifier.from_env()` reads NOTIFY_SOCKET (an absolute path, or `@name` for an abstract
socket) and WATCHDOG_USEC / WATCHDOG_PID, then removes them from `os.environ` so that
engines started later do not inherit them (systemd would ignore their messages under the
default NotifyAccess=main anyway, but a child must not be able to ping our watchdog).
Without NOTIFY_SOCKET every call is a cheap no-op, so the daemon runs the same way under
systemd, in a container or in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "parse_watchdog_usec"]


def parse_watchdog_usec(env: MutableMapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval in seconds, or None when systemd wants no pings from us."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends datagrams to the service manager. Thread-safe; never raises."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self._address: str | bytes | None = None
        if address:
            if address.startswith("@"):
                self._address = b"\0" + address[1:].encode()  # abstract namespace
            elif address.startswith("/"):
                self._address = address
            else:
                log.warning("NOTIFY_SOCKET ignored: not absolute", extra={"socket": address})
        self.watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_watchdog = 0.0
        self.sent: list[str] = []  # kept short; for tests and debugging

    @classmethod
    def from_env(
        cls, env: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        env = os.environ if env is None else env
        notifier = cls(env.get("NOTIFY_SOCKET"), parse_watchdog_usec(env))
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        if self._address is None:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                log.warning("sd_notify failed", extra={"error": str(exc)})
                return False
            self.sent.append(message)
            del self.sent[:-50]
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when half the watchdog interval has passed since the last ping."""
        if self.watchdog_s is None or self._address is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_watchdog >= self.watchdog_s / 2

    def watchdog(self) -> bool:
        """Ping. Call it only from the loop whose liveness it vouches for."""
        if self.watchdog_s is None:
            return False
        self._last_watchdog = time.monotonic()
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
