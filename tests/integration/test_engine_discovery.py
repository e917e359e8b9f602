"""GET /sd/engines: Prometheus HTTP service discovery of a daemon's engines.

The daemon runs in-process over the stateful fakes; the answer is read over loopback the
way Prometheus reads it, and checked against the shape `http_sd_configs` accepts.
Multi-node roles (leader, follower) and states are checked on status documents derived
from the daemon's own.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.vocabulary import MemberKey, ReplicaKey
from reconciler.daemon.discovery import SD_PATH, engine_targets
from reconciler.daemon.loop import Daemon
from reconciler.daemon.wiring import DaemonPorts
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from schemas.nodeconfig import NodeConfig
from schemas.status import NodeStatus
from testrigs.gitserver import free_port

CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  nodes:
    - name: n0
      address: 10.1.2.3
      gpus: {count: 2, model: NVIDIA H100 80GB HBM3, memoryGib: 80}
"""


def deployment(name: str, port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{path: /models/{name}, servedName: {name}}}
  port: {port}
  probes: {{startupTimeoutSeconds: 120}}
"""


CHAT = MemberKey(ReplicaKey("chat", 0), "engine")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, FakeGitSource, FakeProcessPort]]:
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "chat.yaml": deployment("chat", 8000),
                   "code.yaml": deployment("code", 8001)}, subject="two")
    procs = FakeProcessPort(tmp_path / "state")
    config = NodeConfig.model_validate({
        "nodeName": "n0",
        "source": {"url": "https://git.example.test/c.git", "pollIntervalSeconds": 60},
        "stateDir": str(tmp_path / "state"),
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "engine": {"python": "/opt/vllm/bin/python"},
    })
    d = Daemon(config, ports_override=DaemonPorts(source=source, gpus=FakeGpuPort(2),
                                                  processes=procs))
    yield d, source, procs
    d.shutdown()
    source.close()


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def assert_http_sd_shape(groups: Any) -> None:
    """What Prometheus's http_sd accepts: a list of {targets: [str], labels: {str: str}}
    with label names matching [a-zA-Z_][a-zA-Z0-9_]* and none reserved (__*)."""
    assert isinstance(groups, list)
    for g in groups:
        assert set(g) == {"targets", "labels"}
        assert all(isinstance(t, str) and ":" in t for t in g["targets"])
        for k, v in g["labels"].items():
            assert k.isidentifier() and not k.startswith("__") and isinstance(v, str)


def test_engines_listed_over_http_with_labels(
        daemon: tuple[Daemon, FakeGitSource, FakeProcessPort]) -> None:
    d, _, procs = daemon
    assert d.api is not None
    d.api.start()
    code, ctype, body = get(d.api.port, SD_PATH)
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == [], "no desired state yet: nothing to scrape"

    d.request_fetch("test")
    d.iterate()
    assert procs.start_count(CHAT) == 1
    code, _, body = get(d.api.port, SD_PATH)
    groups = json.loads(body)
    assert_http_sd_shape(groups)
    hashes = {r.deployment: r.spec_hash for r in d.node_status().replicas}
    assert groups == [
        {"targets": ["10.1.2.3:8000"],
         "labels": {"deployment": "chat", "replica": "0", "node": "n0", "role": "engine",
                    "spec_hash": hashes["chat"]}},
        {"targets": ["10.1.2.3:8001"],
         "labels": {"deployment": "code", "replica": "0", "node": "n0", "role": "engine",
                    "spec_hash": hashes["code"]}},
    ]


def test_crash_looping_engine_stays_listed_deleted_one_goes(
        daemon: tuple[Daemon, FakeGitSource, FakeProcessPort]) -> None:
    d, source, procs = daemon
    d.request_fetch("test")
    d.iterate()
    for _ in range(2):  # second failure: backoff
        procs.crash(CHAT, 1)
        d.iterate()
    st = d.node_status()
    assert {r.deployment: r.state for r in st.replicas}["chat"] == "CrashLoopBackOff"
    assert [g["labels"]["deployment"] for g in engine_targets(st)] == ["chat", "code"]

    source.commit({"code.yaml": None}, subject="drop code")
    d.request_fetch("test")
    for _ in range(3):
        d.iterate()
    assert [g["labels"]["deployment"] for g in engine_targets(d.node_status())] == ["chat"]


def with_replica(st: NodeStatus, **changes: Any) -> NodeStatus:
    rep = st.replicas[0].model_copy(update=changes)
    return st.model_copy(update={"replicas": [rep]})


def test_multi_node_roles_and_states(
        daemon: tuple[Daemon, FakeGitSource, FakeProcessPort]) -> None:
    d, _, _ = daemon
    d.request_fetch("test")
    d.iterate()
    st = d.node_status()
    # a multi-node replica: the leader's engine serves /metrics, followers do not
    leader = with_replica(st, role="leader", nodes=["n0", "n1"])
    follower = with_replica(st, role="follower", nodes=["n1", "n0"])
    elsewhere = with_replica(st, nodes=["n1"])
    assert [g["targets"] for g in engine_targets(leader)] == [["10.1.2.3:8000"]]
    assert engine_targets(follower) == []
    assert engine_targets(elsewhere) == []
    for state, listed in (("Pending", False), ("Starting", True), ("Ready", True),
                          ("Draining", True), ("Failed", True), ("CrashLoopBackOff", True),
                          ("Stopped", False)):
        assert bool(engine_targets(with_replica(st, state=state))) is listed, state
    v6 = st.model_copy(update={"cluster": st.cluster.model_copy(update={"nodes": [
        st.cluster.nodes[0].model_copy(update={"address": "fd00::7"})]})}) \
        if st.cluster is not None else st
    assert engine_targets(v6)[0]["targets"] == ["[fd00::7]:8000"]
