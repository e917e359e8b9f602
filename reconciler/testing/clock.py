"""A clock that moves only when told to."""

from __future__ import annotations

import threading


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, value: float) -> None:
        """Jump (also backwards: clock jumps happen)."""
        with self._lock:
            self._now = value
