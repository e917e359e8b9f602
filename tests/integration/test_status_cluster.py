"""`reconciler status --cluster` over many stand-in peers on loopback: peers that hang or
refuse are named as unreachable, with why, and the rest are shown; a peer that trickles
its answer past every socket timeout is cut off at --peer-timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from reconciler.ports.peer_fanout import ask_all
from reconciler.ports.peers import PeerAddress, fetch_status
from testrigs.standin_peers import StandInPeers

REPO = Path(__file__).resolve().parents[2]


def _status(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--url", url, "--cluster", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )


def test_json_names_every_unreachable_peer() -> None:
    with StandInPeers(answering=40, stalled=6, refused=4) as peers:
        out = _status(peers.local_url, "--format", "json", "--peer-timeout", "0.5")
    assert out.returncode == 1, out.stderr  # not every node Ready: some are unreachable
    nodes = json.loads(out.stdout)["nodes"]
    assert [n["name"] for n in nodes] == [n["name"] for n in peers.nodes]
    down = {n["name"]: n["error"] for n in nodes if not n["reachable"]}
    assert set(down) == peers.unreachable
    for name, error in down.items():
        if name.startswith("stalled"):
            assert error in ("timed out", "no answer within 0.5 s"), (name, error)
        else:
            assert "refused" in error.lower(), (name, error)
    reachable = [n for n in nodes if n["reachable"]]
    assert len(reachable) == 41
    assert all(n["status"]["node"] == n["name"] for n in reachable)


def test_text_lists_unreachable_workers() -> None:
    with StandInPeers(answering=5, stalled=2) as peers:
        out = _status(peers.local_url, "--peer-timeout", "0.5")
    rows = {line.split()[0]: line for line in out.stdout.split("\n\n")[0].splitlines()[2:]}
    assert "Unreachable" in rows["stalled-0"] and "Unreachable" in rows["stalled-1"]
    assert all("Ready" in rows[f"peer-{i}"] for i in range(5))


def test_all_answering_exits_zero() -> None:
    with StandInPeers(answering=20) as peers:
        out = _status(peers.local_url, "--format", "json")
    assert out.returncode == 0, out.stdout[-2000:]


def test_a_trickling_peer_is_cut_off_at_the_peer_timeout() -> None:
    """One byte every 0.2 s never trips a 0.5 s socket timeout; the deadline still holds."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()
    sent: list[int] = []

    def drip() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b" ")
            except OSError:
                break
            sent.append(1)
            time.sleep(0.2)
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    try:
        (answer,) = ask_all([PeerAddress("drip", "127.0.0.1", server.getsockname()[1])],
                            fetch_status, timeout_s=0.5)
        assert answer.status is None
        assert answer.error == "no answer within 0.5 s"
        assert not stop.is_set() and len(sent) >= 2  # still trickling when we gave up
    finally:
        stop.set()
        server.close()


def test_daemon_peers_port_over_many_peers_some_stalled() -> None:
    """HttpPeers (the daemon's real peers port) on the same fan-out: every answering peer's
    leaders merged, stalled peers absent, and the answer does not wait for them."""
    from reconciler.core.vocabulary import ReplicaKey
    from reconciler.ports.peers import HttpPeers
    from testrigs.status_docs import status_dict

    def leading(name: str) -> dict[str, object]:
        return status_dict(name, [{"deployment": name, "index": 0, "role": "single",
                                   "nodes": [name], "state": "Ready", "specHash": "h1"}])

    with StandInPeers(answering=30, stalled=5, document=leading) as peers:
        addresses = [PeerAddress(n["name"], n["address"], n["statusPort"])
                     for n in peers.nodes[1:]]
        port = HttpPeers(lambda: addresses, timeout_s=0.5)
        found = port.replicas([a.name for a in addresses])
    assert set(found) == {ReplicaKey(f"peer-{i}", 0) for i in range(30)}
    assert all(r.spec_hash == "h1" and r.ready for r in found.values())
