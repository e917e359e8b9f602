"""Rollouts behind the gateway with the real daemon and the real gateway, engines being the
fast stand-in (testrigs/engines/stream_engine.py, which drains on SIGTERM for
--shutdown-timeout like vLLM): light enough to run without the heavy lock, so the drain
path (status Draining -> gateways drop the replica -> SIGTERM -> requests in flight
finish) is checked on every run; tests/system/test_gateway_rollout.py does the same with
real vLLM on network-namespace hosts.

4 streaming clients (1 s per answer) run through the gateway for the whole rollout of a
2-replica deployment:
- RollingUpdate with drainTimeoutSeconds: 0 failed requests.
- the same without a drain timeout: the streams in flight on each replaced engine are cut.
- Recreate with a drain: the requests that find no replica get 503, counted.
- one replica with maxSurge 1 and room for a second engine: 0 failed requests; the same
  without surge: 503 while it is replaced.
- delete of the deployment with drainTimeoutSeconds: 0 failed requests that had started
  (the requests after the replicas left the table get the gateway's 404/503, counted);
  without a drain timeout the streams in flight are cut.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testrigs.daemon_rig import Rig, cluster_yaml, deployment_yaml, wait_until
from testrigs.gateway_rig import Gateway, start_gateway

pytestmark = [pytest.mark.system]
MAX_REQUESTS = 400  # per client


def chat_doc(rig: Rig, delay: float, rollout: dict[str, Any], replicas: int = 2) -> str:
    doc = json.loads(deployment_yaml("chat", rig.engine_port, replicas=replicas,
                                     extra_args=["--tokens", "20", "--token-delay", str(delay)]))
    doc["spec"]["rollout"] = rollout
    return json.dumps(doc)


class Load:
    def __init__(self, g: Gateway, clients: int = 4) -> None:
        self.g = g
        self.stop = threading.Event()
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True)
                        for n in range(clients)]

    def _one(self, user: str) -> str | None:
        conn = http.client.HTTPConnection(self.g.host, self.g.port, timeout=30)
        try:
            body = {"model": "chat-model", "stream": True, "user": user,
                    "messages": [{"role": "user", "content": "hi"}]}
            conn.request("POST", "/v1/chat/completions", json.dumps(body),
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

    def _loop(self, n: int) -> None:
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
                time.sleep(0.2)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _hashes(rig: Rig) -> dict[int, tuple[str, str]]:
    return {int(r["index"]): (r["state"], r["specHash"])
            for r in rig.status()["replicas"] if r["deployment"] == "chat"}


def _rollout(make_rig: Callable[..., Rig], tmp_path: Path, rollout: dict[str, Any],
             replicas: int = 2) -> Load:
    rig = make_rig(gpus=2)
    rig.push({"cluster.yaml": cluster_yaml(rig.engine_port, rig.status_port, 2),
              "chat.yaml": chat_doc(rig, 0.05, rollout, replicas)}, "chat")
    rig.config["engine"]["apiServerModule"] = "testrigs.engines.stream_engine"
    rig.cfg_path.write_text(json.dumps(rig.config))
    rig.start()
    wait_until(lambda: [s for s, _ in _hashes(rig).values()] == ["Ready"] * replicas, 60,
               "every replica Ready")
    g = start_gateway(tmp_path, f"http://127.0.0.1:{rig.status_port}")
    try:
        g.wait_models({"chat-model"})
        old = {h for _, h in _hashes(rig).values()}
        with Load(g) as load:
            time.sleep(2)
            rig.push({"chat.yaml": chat_doc(rig, 0.04, rollout, replicas)}, "faster tokens")
            wait_until(lambda: len(x := _hashes(rig)) == replicas and all(
                s == "Ready" and h not in old for s, h in x.values()), 120,
                "every replica Ready at the new hash")
            # and the surge engine, if any, gone again
            wait_until(lambda: not (rig.state / "engines" / "chat.0.surge.json").exists(), 60,
                       "no surge engine left")
            time.sleep(2)
        print(f"\n{rollout}: {load.ok} ok, failures {dict(load.failures)}")
        return load
    finally:
        g.stop()


def test_rolling_update_with_drain_fails_nothing(make_rig: Callable[..., Rig],
                                                 tmp_path: Path) -> None:
    load = _rollout(make_rig, tmp_path, {"drainTimeoutSeconds": 10})
    assert load.ok > 20 and sum(load.failures.values()) == 0, load.failures


def test_one_replica_with_max_surge_changes_with_zero_failures(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    # room for a second engine (2 GPUs, 1 replica): the new one starts beside the old
    load = _rollout(make_rig, tmp_path, {"maxSurge": 1, "drainTimeoutSeconds": 10}, 1)
    assert load.ok > 20 and sum(load.failures.values()) == 0, load.failures


def test_one_replica_without_surge_is_down_while_it_is_replaced(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    load = _rollout(make_rig, tmp_path, {"drainTimeoutSeconds": 10}, 1)
    assert load.ok > 20 and load.failures["HTTP 503"] > 0, load.failures


def test_rolling_update_without_drain_cuts_the_streams_in_flight(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    load = _rollout(make_rig, tmp_path, {})
    # the gateway aborts a client's connection when its engine breaks mid-stream: the
    # client sees an incomplete chunked body, never a silently short answer
    assert load.ok > 20 and load.failures["IncompleteRead"] > 0, load.failures


def test_recreate_with_drain_counts_the_requests_that_find_no_replica(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    load = _rollout(make_rig, tmp_path, {"strategy": "Recreate", "drainTimeoutSeconds": 10})
    assert load.ok > 20 and load.failures["HTTP 503"] > 0, load.failures
    assert set(load.failures) == {"HTTP 503"}, load.failures  # the drain saw to the rest


def _delete(make_rig: Callable[..., Rig], tmp_path: Path, rollout: dict[str, Any]) -> Load:
    """4 streaming clients through the gateway while the deployment is deleted from git."""
    rig = make_rig(gpus=2)
    rig.push({"cluster.yaml": cluster_yaml(rig.engine_port, rig.status_port, 2),
              "chat.yaml": chat_doc(rig, 0.05, rollout)}, "chat")
    rig.config["engine"]["apiServerModule"] = "testrigs.engines.stream_engine"
    rig.cfg_path.write_text(json.dumps(rig.config))
    rig.start()
    wait_until(lambda: [s for s, _ in _hashes(rig).values()] == ["Ready"] * 2, 60,
               "every replica Ready")
    g = start_gateway(tmp_path, f"http://127.0.0.1:{rig.status_port}")
    try:
        g.wait_models({"chat-model"})
        with Load(g) as load:
            time.sleep(2)
            rig.push({"chat.yaml": None}, "delete chat")
            wait_until(lambda: not list((rig.state / "engines").glob("chat.*.json"))
                       and not _hashes(rig), 60, "every engine of chat stopped")
            time.sleep(2)  # requests after the replicas left every table
        print(f"\ndelete {rollout}: {load.ok} ok, failures {dict(load.failures)}")
        return load
    finally:
        g.stop()


def test_delete_with_drain_fails_no_request_that_had_started(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """The deleted deployment's engines still drain (they know their drain from how they
    were launched): streams in flight finish; requests after the replicas left the
    gateway's table get its 404 (model unknown) or 503, counted."""
    load = _delete(make_rig, tmp_path, {"drainTimeoutSeconds": 10})
    turned_away = load.failures["HTTP 404"] + load.failures["HTTP 503"]
    assert load.ok >= 6 and turned_away > 0, load.failures
    assert set(load.failures) <= {"HTTP 404", "HTTP 503"}, load.failures


def test_delete_without_drain_cuts_the_streams_in_flight(
        make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    load = _delete(make_rig, tmp_path, {})
    assert load.failures["IncompleteRead"] > 0, load.failures
