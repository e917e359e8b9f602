"""The clock's contract: SystemClock and FakeClock are wall-clock seconds as floats that
never go back while nobody sets them, move forward by the time that passes, and can be
read from several threads at once. (Jumps, FakeClock.set, have no real counterpart to
check here: tests/integration/test_reliability_clock.py covers what a jump does.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from reconciler.ports.clock import Clock, SystemClock
from reconciler.testing.clock import FakeClock

Advance = Callable[[float], None]


def real() -> tuple[Clock, Advance]:
    return SystemClock(), time.sleep


def fake() -> tuple[Clock, Advance]:
    clock = FakeClock()

    def advance(seconds: float) -> None:
        clock.advance(seconds)

    return clock, advance


@pytest.fixture(params=[real, fake], ids=["real", "fake"])
def world(request: pytest.FixtureRequest) -> tuple[Clock, Advance]:
    make: Callable[[], tuple[Clock, Advance]] = request.param
    return make()


def test_now_is_seconds_and_moves_with_time(world: tuple[Clock, Advance]) -> None:
    clock, advance = world
    t0 = clock.now()
    assert isinstance(t0, float) and t0 > 0
    assert clock.now() >= t0
    advance(0.2)
    t1 = clock.now()
    assert 0.19 <= t1 - t0 < 5.0, t1 - t0


def test_reads_from_many_threads_never_go_back(world: tuple[Clock, Advance]) -> None:
    clock, advance = world
    problems: list[str] = []

    def reader() -> None:
        last = clock.now()
        for _ in range(2000):
            now = clock.now()
            if now < last:
                problems.append(f"{now} < {last}")
            last = now

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        advance(0.001)
    for t in threads:
        t.join(10)
    assert not problems
