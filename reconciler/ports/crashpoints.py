"""Test-only crash points: kill the daemon with SIGKILL at a named place in apply/ports.

    RECONCILER_TEST_CRASH_AT=engine-started   reconciler run --config ...

Reliability tests (tests/system/test_reliability.py) use them to prove that a daemon
killed at the worst moment loses, orphans and duplicates nothing once it is started
again. Points:

- ``engine-started``: in LocalProcessPort.start, after the engine process exists and
  before its state file is written.
- ``engine-stopped``: in apply, after a stop is confirmed (state file gone) and before
  the inventory forgets the member.

NEVER set the variable in production. The environment is read once at import; with it
unset, `crash_point()` is one comparison against None.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "RECONCILER_TEST_CRASH_AT"
POINTS = frozenset({"engine-started", "engine-stopped"})

_armed: str | None = os.environ.get(CRASH_ENV) or None


def crash_point(name: str) -> None:
    """SIGKILL this process if the test asked for a crash at `name`."""
    if _armed is None or _armed != name:
        return
    os.kill(os.getpid(), signal.SIGKILL)
