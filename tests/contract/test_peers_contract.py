"""The peers port's contract: HttpPeers asking a loopback stand-in for another daemon's
/status, and FakePeers told the same facts with `lead()`, report the same replicas; a
peer that stops answering, or is not asked, is simply absent from both; `answered` names
only the peers that answered.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import pytest

from reconciler.core.vocabulary import PeerReplica, ReplicaKey
from reconciler.ports.peers import HttpPeers, PeerAddress, PeerPort
from reconciler.testing.peers import FakePeers
from testrigs.status_docs import status_dict

SINGLE = ReplicaKey("chat", 0)
MULTI = ReplicaKey("big", 1)
PEER = "n2"  # the one peer of both worlds


class World(Protocol):
    port: PeerPort

    def lead(self, key: ReplicaKey, spec_hash: str, *, ready: bool,
             ray_head: bool = False, draining: bool = False) -> None: ...
    def unreachable(self) -> None: ...


class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True
    doc: dict[str, Any]


class _Handler(BaseHTTPRequestHandler):
    server: _StatusServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(self.server.doc).encode()
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RealWorld:
    """One peer, n2, a stand-in daemon serving a whole NodeStatus document."""

    def __init__(self) -> None:
        self.replicas: list[dict[str, Any]] = []
        self.server = _StatusServer(("127.0.0.1", 0), _Handler)
        self.server.doc = status_dict("n2")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        address = PeerAddress("n2", "127.0.0.1", int(self.server.server_address[1]))
        self.port: PeerPort = HttpPeers(lambda: [address], timeout_s=2.0)

    def lead(self, key: ReplicaKey, spec_hash: str, *, ready: bool,
             ray_head: bool = False, draining: bool = False) -> None:
        health = "ready" if ready else "starting"
        members = [{"role": "engine", "specHash": spec_hash, "health": health}]
        if ray_head:
            members.append({"role": "ray-head", "specHash": spec_hash, "health": "ready"})
        self.replicas.append({
            "deployment": key.deployment, "index": key.index,
            "state": "Draining" if draining else "Ready" if ready else "Starting",
            "role": "leader" if ray_head else "single",
            "nodes": ["n2", "n3"] if ray_head else ["n2"], "specHash": spec_hash,
            "port": 8000, "members": members,
        })
        self.server.doc = status_dict("n2", self.replicas)

    def unreachable(self) -> None:
        self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


class FakeWorld:
    def __init__(self) -> None:
        self.fake = FakePeers()
        self.fake.leads_nothing(PEER)  # up, like the real world's stand-in daemon
        self.port: PeerPort = self.fake

    def lead(self, key: ReplicaKey, spec_hash: str, *, ready: bool,
             ray_head: bool = False, draining: bool = False) -> None:
        self.fake.lead(key, spec_hash, ready=ready, by=PEER, ray_head=ray_head,
                       draining=draining)

    def unreachable(self) -> None:
        self.fake.unreachable()

    def close(self) -> None:
        pass


@pytest.fixture(params=["real", "fake"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    w: RealWorld | FakeWorld = RealWorld() if request.param == "real" else FakeWorld()
    yield w
    w.close()


def test_a_peer_with_nothing_reports_nothing(world: World) -> None:
    answers = world.port.replicas([PEER])
    assert dict(answers) == {}
    # ...but it answered: a leader that runs nothing of a replica any more, not an
    # unknown one (a draining follower leaves at once: core/drain.py)
    assert answers.answered == {PEER}


def test_what_a_peer_leads_is_reported_as_it_runs(world: World) -> None:
    world.lead(SINGLE, "aaaa", ready=False)
    world.lead(MULTI, "bbbb", ready=True, ray_head=True)
    assert dict(world.port.replicas([PEER])) == {
        SINGLE: PeerReplica("aaaa", ready=False, engine_hash="aaaa"),
        MULTI: PeerReplica("bbbb", ready=True, head_up=True, engine_hash="bbbb",
                           engine_ready=True),
    }


def test_a_draining_leader_is_reported_draining_with_its_engine_still_running(
        world: World) -> None:
    world.lead(MULTI, "bbbb", ready=True, ray_head=True, draining=True)
    assert dict(world.port.replicas([PEER])) == {
        MULTI: PeerReplica("bbbb", ready=True, head_up=True, engine_hash="bbbb",
                           engine_ready=True, draining=True),
    }


def test_an_unreachable_peer_is_simply_absent(world: World) -> None:
    world.lead(SINGLE, "aaaa", ready=True)
    assert SINGLE in world.port.replicas([PEER])
    world.unreachable()
    answers = world.port.replicas([PEER])
    assert dict(answers) == {} and answers.answered == frozenset()


def test_only_the_nodes_asked_answer(world: World) -> None:
    world.lead(SINGLE, "aaaa", ready=True)
    assert dict(world.port.replicas([])) == {}
    assert dict(world.port.replicas(["n3"])) == {}
    assert world.port.replicas(["n3"]).answered == frozenset()
    assert SINGLE in world.port.replicas(["n3", PEER])
    assert world.port.replicas(["n3", PEER]).answered == {PEER}
