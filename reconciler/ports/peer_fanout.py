"""Ask many peers at once, each within its own deadline, none waited on past it.

    answers = ask_all(peers, fetch_status, timeout_s=1.0, concurrency=32)

At most `concurrency` requests are in flight. A peer that has not answered `timeout_s`
after its request started is reported as not answering and left behind: its thread is
a daemon thread that ends when its socket times out, and a new worker takes its place,
so one slow peer (one that trickles a byte a second past every socket timeout, say)
delays neither the others nor the caller. A cluster of 1,000 nodes with 10 down then
costs about one timeout, not ten.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class PeerAddress(Protocol):
    """What is asked: reconciler.ports.peers.PeerAddress fits."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...


Fetch = Callable[[str, int, float], dict[str, Any]]
# a socket timeout surfaces a hair after timeout_s: let its own message win the race
_GRACE_S = 0.1


@dataclass(frozen=True)
class PeerAnswer:
    peer: PeerAddress
    status: dict[str, Any] | None  # None: no usable answer
    error: str = ""  # why not, when status is None
    seconds: float = 0.0


class _Run:
    def __init__(self, peers: Sequence[PeerAddress], fetch: Fetch, timeout_s: float) -> None:
        self.peers = peers
        self.fetch = fetch
        self.timeout_s = timeout_s
        self.cond = threading.Condition()
        self.next = 0  # next index to hand out
        self.started: dict[int, float] = {}  # index -> monotonic start, while in flight
        self.answers: dict[int, PeerAnswer] = {}

    def worker(self) -> None:
        while True:
            with self.cond:
                if self.next >= len(self.peers):
                    return
                i = self.next
                self.next += 1
                start = self.started[i] = time.monotonic()
            peer = self.peers[i]
            try:
                answer = PeerAnswer(peer, self.fetch(peer.address, peer.port, self.timeout_s))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                answer = PeerAnswer(peer, None, str(exc) or type(exc).__name__)
            with self.cond:
                self.started.pop(i, None)
                if i in self.answers:
                    return  # abandoned: a replacement worker already took this one's place
                self.answers[i] = PeerAnswer(
                    answer.peer, answer.status, answer.error, time.monotonic() - start
                )
                self.cond.notify_all()


def _spawn(run: _Run) -> None:
    threading.Thread(target=run.worker, name="peer-fanout", daemon=True).start()


def ask_all(
    peers: Sequence[PeerAddress],
    fetch: Fetch,
    *,
    timeout_s: float,
    concurrency: int = 32,
) -> list[PeerAnswer]:
    """One answer per peer, in the order of `peers`."""
    if not peers:
        return []
    run = _Run(peers, fetch, timeout_s)
    for _ in range(min(max(concurrency, 1), len(peers))):
        _spawn(run)
    with run.cond:
        while len(run.answers) < len(peers):
            now = time.monotonic()
            overdue = [i for i, t in run.started.items() if now - t >= timeout_s + _GRACE_S]
            for i in overdue:
                began = run.started.pop(i)
                run.answers[i] = PeerAnswer(
                    peers[i], None, f"no answer within {timeout_s:g} s", now - began
                )
                _spawn(run)  # the stuck worker no longer counts against the bound
            if len(run.answers) >= len(peers):
                break
            waits = [t + timeout_s + _GRACE_S - now for t in run.started.values()]
            run.cond.wait(timeout=max(0.005, min(waits)) if waits else 0.05)
    return [run.answers[i] for i in range(len(peers))]
