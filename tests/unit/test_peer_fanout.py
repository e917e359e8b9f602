"""ask_all: every peer at once within a bound, each within its deadline, none waited on
past it. Behaviour, not timing: fetches that block until released prove what ran
concurrently and that the answer came back while they were still stuck."""

from __future__ import annotations

import threading
from typing import Any

from reconciler.ports.peer_fanout import ask_all
from reconciler.ports.peers import PeerAddress


class Recorder:
    """A fetch whose `stuck` peers block until `release` is set; counts what is in flight."""

    def __init__(self, stuck: set[str] | None = None, hold: threading.Event | None = None):
        self.stuck = stuck or set()
        self.release = threading.Event()
        self.hold = hold  # when set, answering peers also wait on it (to pile them up)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.asked: list[str] = []

    def __call__(self, address: str, port: int, timeout: float) -> dict[str, Any]:
        name = address
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.asked.append(name)
        try:
            if name in self.stuck:
                self.release.wait(30)
                raise OSError("released")
            if self.hold is not None:
                self.hold.wait(0.05)
            return {"node": name}
        finally:
            with self.lock:
                self.in_flight -= 1


def peers(*names: str) -> list[PeerAddress]:
    return [PeerAddress(n, n, 1) for n in names]


def test_unreachable_peers_are_named_and_not_waited_for() -> None:
    names = [f"ok-{i}" for i in range(20)] + [f"down-{i}" for i in range(5)]
    fetch = Recorder(stuck={f"down-{i}" for i in range(5)})
    answers = ask_all(peers(*names), fetch, timeout_s=0.2, concurrency=32)
    # returned while every stuck fetch is still blocked: nobody waited for them
    assert not fetch.release.is_set()
    assert fetch.in_flight == 5
    fetch.release.set()
    assert [a.peer.name for a in answers] == names  # in the order asked
    down = {a.peer.name: a.error for a in answers if a.status is None}
    assert down == {f"down-{i}": "no answer within 0.2 s" for i in range(5)}
    assert all(a.status == {"node": a.peer.name} for a in answers if a.peer.name.startswith("ok"))


def test_concurrency_is_bounded() -> None:
    fetch = Recorder(hold=threading.Event())
    answers = ask_all(peers(*[f"p{i}" for i in range(40)]), fetch, timeout_s=5, concurrency=4)
    assert all(a.status is not None for a in answers)
    assert fetch.most == 4


def test_all_asked_at_once_when_the_bound_allows() -> None:
    stuck = {f"p{i}" for i in range(10)}
    fetch = Recorder(stuck=stuck)
    ask_all(peers(*sorted(stuck)), fetch, timeout_s=0.2, concurrency=32)
    assert fetch.most == 10  # ten in flight together: not one after another
    fetch.release.set()


def test_stuck_workers_are_replaced() -> None:
    """Two peers that never answer hold both workers of a bound of 2; the other ten are
    still asked and answer."""
    names = ["down-0", "down-1"] + [f"ok-{i}" for i in range(10)]
    fetch = Recorder(stuck={"down-0", "down-1"})
    answers = ask_all(peers(*names), fetch, timeout_s=0.2, concurrency=2)
    fetch.release.set()
    assert [a.peer.name for a in answers if a.status is not None] == names[2:]


def test_errors_are_reported_per_peer() -> None:
    def fetch(address: str, port: int, timeout: float) -> dict[str, Any]:
        if address == "bad":
            raise ValueError("/status is not a JSON object")
        if address == "refused":
            raise ConnectionRefusedError(111, "Connection refused")
        return {"node": address}

    answers = ask_all(peers("good", "bad", "refused"), fetch, timeout_s=1)
    assert [(a.peer.name, a.status is not None, a.error) for a in answers] == [
        ("good", True, ""),
        ("bad", False, "/status is not a JSON object"),
        ("refused", False, "[Errno 111] Connection refused"),
    ]


def test_no_peers() -> None:
    assert ask_all([], Recorder(), timeout_s=1) == []
