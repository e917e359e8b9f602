"""The daemon in-process over stateful fakes: FakeGitSource, FakeGpuPort, FakeProcessPort.

Most tests drive `Daemon.iterate()` directly (deterministic); the threaded ones start the
worker, the scheduler and the HTTP listener and talk to it over loopback.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.members import DRAIN_ANNOUNCE_S
from reconciler.core.vocabulary import MemberKey, ReplicaKey
from reconciler.daemon.loop import Daemon
from reconciler.daemon.sdnotify import Notifier
from reconciler.daemon.status import status_schema
from reconciler.daemon.webhook_auth import hmac_sha256_hex
from reconciler.daemon.wiring import DaemonPorts
from reconciler.ports.peers import HttpPeers, PeerAddress, peer_replicas
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from schemas.nodeconfig import NodeConfig
from schemas.status import NodeStatus
from testrigs.gitserver import free_port
from testrigs.status_docs import status_dict

SECRET = "s3cr3t-webhook-value-1234"

CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {count: 2, model: NVIDIA H100 80GB HBM3, memoryGib: 80}
"""


def deployment(name: str, port: int, max_len: int = 1024) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{path: /models/{name}, servedName: {name}}}
  engine: {{maxModelLen: {max_len}}}
  port: {port}
  probes: {{startupTimeoutSeconds: 120}}
"""


CHAT = MemberKey(ReplicaKey("chat", 0), "engine")


def node_config(tmp: Path, port: int | None = None) -> NodeConfig:
    secret = tmp / "webhook.secret"
    secret.write_text(SECRET + "\n")
    return NodeConfig.model_validate(
        {
            "nodeName": "n0",
            "source": {"url": "https://git.example.test/cluster.git", "pollIntervalSeconds": 60},
            "stateDir": str(tmp / "state"),
            "listen": {"address": "127.0.0.1", "port": port or free_port()},
            "webhook": {"secretFile": str(secret)},
            "engine": {"python": "/opt/vllm/bin/python"},
            "resyncIntervalSeconds": 0.2,
        }
    )


class Rig:
    def __init__(self, tmp: Path, notifier: Notifier | None = None) -> None:
        self.source = FakeGitSource()
        self.source.commit({"cluster.yaml": CLUSTER, "chat.yaml": deployment("chat", 8000)},
                           subject="add chat")
        self.gpus = FakeGpuPort(2)
        self.procs = FakeProcessPort(tmp / "state")
        self.config = node_config(tmp)
        self.daemon = Daemon(
            self.config,
            ports_override=DaemonPorts(source=self.source, gpus=self.gpus, processes=self.procs),
            notifier=notifier,
        )

    def iterate(self) -> None:
        """One worker pass with a fetch, as after a poll timer or a webhook."""
        self.daemon.request_fetch("test")
        self.daemon.iterate()

    def status(self) -> dict[str, Any]:
        return self.daemon.status()

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.status()["conditions"] if c["type"] == kind)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.daemon.metrics.render().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.daemon.shutdown()
    r.source.close()


def validate(status: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(status_schema()).validate(status)


def test_one_tick_starts_the_engine_then_ready(rig: Rig) -> None:
    rig.iterate()
    assert rig.procs.start_count(CHAT) == 1
    st = rig.status()
    validate(st)
    assert st["revisions"]["lastGood"]["subject"] == "add chat"
    assert st["revisions"]["applied"] is None
    assert rig.condition("Reconciling")["status"] == "True"
    assert rig.condition("Ready")["status"] == "Unknown"
    [rep] = st["replicas"]
    assert rep["state"] == "Starting" and rep["port"] == 8000 and rep["nodes"] == ["n0"]

    rig.procs.set_health(CHAT, "ready")
    rig.iterate()  # MarkReady
    rig.iterate()  # nothing to do: applied
    st = rig.status()
    validate(st)
    assert st["revisions"]["applied"]["revision"] == rig.source.head
    assert st["revisions"]["applied"]["author"] == "Operator <op@example.test>"
    assert rig.condition("Ready")["status"] == "True"
    assert rig.condition("Reconciling")["status"] == "False"
    assert st["gpus"]["counts"] == {"assigned": 1, "free": 1, "foreign": 0, "missing": 0,
                                    "unhealthy": 0, "unmanaged": 0}
    m = rig.metrics()
    assert m[("reconciler_replicas", (("deployment", "chat"), ("state", "Ready")))] == 1
    assert m[("reconciler_reconcile_total", (("result", "success"),))] == 3
    assert m[("reconciler_last_applied_revision_info", (("revision", rig.source.head),))] == 1
    assert m[("reconciler_gpus", (("state", "assigned"),))] == 1
    assert m[("reconciler_gpus", (("state", "free"),))] == 1
    assert m[("reconciler_gpus_simulated", ())] == 0
    assert m[("reconciler_stalled", ())] == 0
    assert m[("reconciler_ready", ())] == 1
    assert m[("reconciler_source_last_fetch_success_timestamp_seconds", ())] > 0
    assert m[("reconciler_reconcile_duration_seconds_count", ())] == 3


def test_bad_commit_keeps_last_good_stops_nothing_and_stalls_until_fixed(rig: Rig) -> None:
    rig.iterate()
    rig.procs.set_health(CHAT, "ready")
    rig.iterate()
    rig.iterate()
    good = rig.source.head
    first_transition = rig.condition("Ready")["lastTransitionTime"]

    bad = rig.source.commit({"chat.yaml": "apiVersion: [unclosed\n"}, subject="typo")
    rig.iterate()
    st = rig.status()
    validate(st)
    assert rig.procs.stop_count() == 0 and rig.procs.start_count() == 1
    assert st["revisions"]["attempted"]["revision"] == bad
    assert st["revisions"]["lastGood"]["revision"] == good
    assert st["revisions"]["applied"]["revision"] == good
    stalled = rig.condition("Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidDesiredState"
    assert good[:12] in stalled["message"]
    assert rig.condition("Ready")["status"] == "False"
    assert st["source"]["failure"]["problems"], "located problems are reported"
    assert st["replicas"][0]["state"] == "Ready"
    m = rig.metrics()
    assert m[("reconciler_stalled", ())] == 1
    assert m[("reconciler_source_revisions_refused_total",
              (("reason", "InvalidDesiredState"),))] == 1
    assert m[("reconciler_last_attempted_revision_info", (("revision", bad),))] == 1

    # a retryable fetch failure meanwhile does not clear (or flap) the stall
    rig.source.set_down()
    rig.iterate()
    assert rig.condition("Stalled")["status"] == "True"
    assert rig.metrics()[("reconciler_source_fetch_failures_total",
                          (("reason", "FetchFailed"),))] == 1
    rig.source.set_down(False)

    # the same bad commit again: counted once, still stalled
    rig.iterate()
    assert rig.metrics()[("reconciler_source_revisions_refused_total",
                          (("reason", "InvalidDesiredState"),))] == 1

    fix = rig.source.commit({"chat.yaml": deployment("chat", 8000)}, subject="fix typo")
    rig.iterate()
    rig.iterate()
    st = rig.status()
    validate(st)
    assert rig.condition("Stalled")["status"] == "False"
    assert rig.condition("Ready")["status"] == "True"
    assert st["revisions"]["applied"]["revision"] == fix
    assert st["revisions"]["applied"]["subject"] == "fix typo"
    assert rig.procs.stop_count() == 0, "same spec: the engine keeps running"
    assert rig.condition("Ready")["lastTransitionTime"] >= first_transition
    assert rig.metrics()[("reconciler_stalled", ())] == 0


def test_crashloop_counts_restarts_and_sets_ready_false(rig: Rig) -> None:
    rig.iterate()
    rig.procs.crash(CHAT, 1)
    rig.iterate()  # reaped and restarted at once (first failure: no delay)
    rig.procs.crash(CHAT, 1)
    rig.iterate()  # second failure: backoff
    st = rig.status()
    validate(st)
    assert st["replicas"][0]["state"] == "CrashLoopBackOff"
    assert rig.condition("Ready")["reason"] == "ReplicaFailed"
    m = rig.metrics()
    assert m[("reconciler_engine_restarts_total", (("deployment", "chat"),))] == 2
    assert m[("reconciler_replicas", (("deployment", "chat"), ("state", "CrashLoopBackOff")))] == 1


def _request(port: int, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_threaded_daemon_webhook_status_metrics_and_engine_exit(rig: Rig) -> None:
    d = rig.daemon
    assert d.api is not None
    d.start()
    port = d.api.port
    wait_for(lambda: rig.procs.start_count(CHAT) == 1)
    wait_for(lambda: d.status()["lastTick"] is not None)

    status, body = _request(port, "GET", "/status")
    assert status == 200
    validate(json.loads(body))
    assert _request(port, "GET", "/healthz")[0] == 200
    assert _request(port, "GET", "/nope")[0] == 404

    fetches = rig.source.calls.fetch
    payload = b'{"ref": "refs/heads/main", "lies": true}'
    assert _request(port, "POST", "/webhook", payload)[0] == 401  # missing
    bad = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert _request(port, "POST", "/webhook", payload, bad)[0] == 401
    assert _request(port, "POST", "/webhook", b"x" * 10, {"X-Gitlab-Token": "nope"})[0] == 401
    assert rig.source.calls.fetch == fetches, "an unauthenticated webhook wakes nothing"
    good = {"X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, payload)}
    assert _request(port, "POST", "/webhook", payload, good)[0] == 204
    wait_for(lambda: rig.source.calls.fetch > fetches)
    big = {"Content-Length": str(10 * 1024 * 1024), **good}
    assert _request(port, "POST", "/webhook", b"", big)[0] == 413

    # an engine exit wakes the worker: reaped and restarted without waiting for a timer
    rig.procs.crash(CHAT, 1)
    wait_for(lambda: rig.procs.start_count(CHAT) == 2)

    _, text = _request(port, "GET", "/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    hooks = {s.labels["result"]: s.value for s in fams["reconciler_webhook_requests"].samples
             if s.name.endswith("_total")}
    assert hooks["unauthorized"] == 3 and hooks["accepted"] == 1 and hooks["too_large"] == 1
    assert SECRET not in text.decode()
    d.stop()
    d.shutdown()
    assert rig.procs.stop_count() == 0, "engines are left running at exit"
    assert rig.procs.process(CHAT) is not None


def test_a_pending_drain_ticks_on_its_own_not_at_the_next_resync(tmp_path: Path) -> None:
    """A delete with drainTimeoutSeconds, the resync timer 10 minutes away: the daemon
    announces the drain and stops the engine DRAIN_ANNOUNCE_S later by itself."""
    r = Rig(tmp_path)
    r.config = r.config.model_copy(update={"resync_interval_seconds": 600.0})
    r.daemon.shutdown()
    r.daemon = Daemon(r.config, ports_override=DaemonPorts(
        source=r.source, gpus=r.gpus, processes=r.procs))
    drained = deployment("chat", 8000) + "  rollout: {drainTimeoutSeconds: 5}\n"
    r.source.commit({"chat.yaml": drained}, subject="chat drains")
    d = r.daemon
    try:
        d.start()
        wait_for(lambda: r.procs.start_count(CHAT) == 1)
        r.procs.set_health(CHAT, "ready")
        d.request_fetch("test")
        wait_for(lambda: any(x["state"] == "Ready" for x in d.status()["replicas"]))
        r.source.commit({"chat.yaml": None}, subject="delete chat")
        d.request_fetch("webhook")
        wait_for(lambda: any(x["state"] == "Draining" for x in d.status()["replicas"]))
        announced = time.monotonic()
        wait_for(lambda: r.procs.stop_count(CHAT) == 1, timeout=DRAIN_ANNOUNCE_S + 3.0)
        assert time.monotonic() - announced >= DRAIN_ANNOUNCE_S - 0.5
        ((_, member, grace),) = r.procs.stop_log
        assert member == CHAT and grace == r.config.engine.stop_grace_period_seconds + 5
    finally:
        d.stop()
        d.shutdown()
        r.source.close()


def test_slow_engine_start_does_not_block_status(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    gate = threading.Event()
    real_start = r.procs.start

    def slow_start(launch: Any) -> Any:
        gate.wait(10)
        return real_start(launch)

    r.procs.start = slow_start  # type: ignore[method-assign]
    d = r.daemon
    assert d.api is not None
    try:
        d.start()
        time.sleep(0.3)  # the worker is now inside start()
        t0 = time.monotonic()
        status, _ = _request(d.api.port, "GET", "/status")
        assert status == 200 and time.monotonic() - t0 < 1.0
        assert _request(d.api.port, "GET", "/metrics")[0] == 200
        assert rig_start_count(r) == 0
    finally:
        gate.set()
        d.stop()
        d.shutdown()
        r.source.close()


def rig_start_count(r: Rig) -> int:
    return r.procs.start_count(CHAT)


def test_stop_engines_on_exit(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.daemon.config = r.config.model_copy(update={"stop_engines_on_exit": True})
    r.iterate()
    r.daemon.shutdown()
    assert r.procs.stop_count(CHAT) == 1
    assert r.procs.process(CHAT) is None
    r.source.close()


def test_watchdog_pings_come_from_the_loop(tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(2)
        notifier = Notifier(str(sock_path), watchdog_s=0.4)
        r = Rig(tmp_path, notifier=notifier)
        try:
            r.daemon.start()
            got: list[str] = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                got.append(sock.recv(4096).decode())
            assert any(m.startswith("READY=1\nSTATUS=Ready=") for m in got)
            assert sum(m == "WATCHDOG=1" for m in got) >= 3
        finally:
            r.daemon.stop()
            r.daemon.shutdown()
            r.source.close()


def test_peers_read_leaders_from_status() -> None:
    doc = status_dict("n1", [
        {"deployment": "a", "index": 0, "state": "Ready", "role": "single",
         "nodes": ["n1"], "specHash": "h1"},
        {"deployment": "b", "index": 0, "state": "Starting", "role": "follower",
         "nodes": ["n2", "n1"], "specHash": "h2"},
        {"deployment": "c", "index": 1, "state": "Starting", "role": "leader",
         "nodes": ["n1", "n2"], "specHash": "h3"},
    ])
    found = peer_replicas(NodeStatus.model_validate(doc))
    assert set(found) == {ReplicaKey("a", 0), ReplicaKey("c", 1)}
    assert found[ReplicaKey("a", 0)].ready and not found[ReplicaKey("c", 1)].ready

    def fetch(address: str, port: int, timeout: float) -> dict[str, Any]:
        if address == "10.0.0.2":
            raise OSError("unreachable")
        return doc

    peers = HttpPeers(lambda: [PeerAddress("n1", "10.0.0.1", 9400),
                               PeerAddress("n2", "10.0.0.2", 9400)], fetch=fetch)
    assert set(peers.replicas(["n1", "n2"])) == {ReplicaKey("a", 0), ReplicaKey("c", 1)}
    assert peers.replicas(["n2"]) == {}  # only the asked nodes answer
