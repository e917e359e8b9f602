"""The clock port: wall-clock seconds. Backoff records outlive reboots, so not monotonic."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()
