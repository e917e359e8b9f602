"""The reconcile loop end to end in-process: SourceSync + Reconciler over stateful fakes
of every port and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.control.apply import ApplyConfig
from reconciler.control.reconcile import Ports, Reconciler
from reconciler.core.backoff import BackoffPolicy
from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import MemberKey, ReplicaKey
from reconciler.desired.source_sync import SourceSync
from reconciler.ports.inventory import InventoryStore
from reconciler.testing.clock import FakeClock
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort

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


def deployment(name: str, port: int, max_len: int = 1024, replicas: int = 1) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{path: /models/{name}, servedName: {name}}}
  replicas: {replicas}
  engine: {{maxModelLen: {max_len}}}
  port: {port}
  probes: {{startupTimeoutSeconds: 120}}
"""


class Node:
    def __init__(self, tmp: Path, source: FakeGitSource) -> None:
        self.clock = FakeClock()
        self.gpus = FakeGpuPort(2)
        self.procs = FakeProcessPort(tmp / "state", clock=self.clock)
        self.sync = SourceSync(source, tmp / "state")
        self.inventory = InventoryStore(tmp / "state")
        self.rec = Reconciler(
            node=NodeContext(name="n0", python="/opt/vllm/bin/python", ray="/opt/vllm/bin/ray",
                             backoff=BackoffPolicy(jitter=0.0)),
            ports=Ports(gpus=self.gpus, processes=self.procs, clock=self.clock),
            inventory=self.inventory,
            desired=lambda: self.sync.desired,
            apply_config=ApplyConfig(stop_grace_s=1.0),
        )

    def tick(self) -> None:
        self.sync.sync(self.clock.now())
        self.rec.tick()


ENGINE_A = MemberKey(ReplicaKey("a", 0), "engine")
ENGINE_B = MemberKey(ReplicaKey("b", 0), "engine")


@pytest.fixture
def source() -> FakeGitSource:
    return FakeGitSource()


def test_deploy_ready_then_change_replaces_only_the_changed_engine(
    tmp_path: Path, source: FakeGitSource
) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000),
                   "b.yaml": deployment("b", 8001)})
    n = Node(tmp_path, source)
    n.tick()
    assert n.procs.start_count() == 2
    n.procs.set_health(ENGINE_A, "ready")
    n.procs.set_health(ENGINE_B, "ready")
    n.tick()
    assert n.rec.last is not None and n.rec.last.converged
    assert n.inventory.current.applied_revision == source.head
    pid_b = n.procs.process(ENGINE_B).pid  # type: ignore[union-attr]
    source.commit({"a.yaml": deployment("a", 8000, max_len=2048)}, subject="longer context")
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 2 and n.procs.stop_count(ENGINE_A) == 1
    assert n.procs.process(ENGINE_B).pid == pid_b  # type: ignore[union-attr]
    assert n.procs.start_count(ENGINE_B) == 1


def test_bad_commit_keeps_last_good_and_stops_nothing(
    tmp_path: Path, source: FakeGitSource
) -> None:
    good = source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    bad = source.commit({"a.yaml": "apiVersion: reconciler.dev/v1alpha1\nkind: Model\n"},
                        subject="typo")
    n.tick()
    n.tick()
    assert n.sync.good is not None and n.sync.good.revision == good
    assert n.sync.attempted is not None and n.sync.attempted.revision == bad
    assert n.sync.failure is not None and n.sync.failure.reason == "InvalidDesiredState"
    assert "unknown kind" in n.sync.failure.message
    assert n.procs.stop_count() == 0 and n.procs.process(ENGINE_A).running  # type: ignore[union-attr]
    # deleting every file is also "desired unknown" (no Cluster), not "desired empty"
    source.commit({"a.yaml": None, "cluster.yaml": None}, subject="oops")
    n.tick()
    assert n.procs.stop_count() == 0
    # the fix lands
    fix = source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n.tick()
    assert n.sync.good is not None and n.sync.good.revision == fix and n.sync.failure is None


def test_fetch_failure_stops_nothing(tmp_path: Path, source: FakeGitSource) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    source.set_down(True)
    n.tick()
    assert n.sync.failure is not None and n.sync.failure.retryable
    assert n.procs.stop_count() == 0


def test_crash_backoff_restart(tmp_path: Path, source: FakeGitSource) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    # first crash: restarted in the same tick
    n.procs.crash(ENGINE_A, 137)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 2
    # second crash soon after: CrashLoopBackOff for 10 s
    n.clock.advance(1)
    n.procs.crash(ENGINE_A, 137)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 2
    assert n.rec.last is not None
    assert n.rec.last.plan.replicas[ReplicaKey("a", 0)].state == "CrashLoopBackOff"
    n.clock.advance(5)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 2
    n.clock.advance(6)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 3
    # third crash: 20 s
    n.procs.crash(ENGINE_A, 1)
    n.tick()
    n.clock.advance(15)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 3
    n.clock.advance(6)
    n.tick()
    assert n.procs.start_count(ENGINE_A) == 4
    assert n.rec.restarts_total["a"] == 3
    assert n.inventory.current.restarts[ReplicaKey("a", 0)].total_restarts == 3


def test_restart_of_the_daemon_adopts_and_does_not_duplicate(
    tmp_path: Path, source: FakeGitSource
) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    pid = n.procs.process(ENGINE_A).pid  # type: ignore[union-attr]
    # a new daemon over the same state dir and the same host
    m = Node(tmp_path, source)
    m.procs = FakeProcessPort(tmp_path / "state", host=n.procs.host, clock=m.clock)
    m.rec.ports.processes = m.procs
    assert m.sync.desired is not None  # restored from the state dir before any fetch
    m.tick()
    assert m.procs.start_count() == 0
    assert m.procs.process(ENGINE_A).pid == pid  # type: ignore[union-attr]


def test_port_taken_by_a_stranger_is_a_clear_replica_error(
    tmp_path: Path, source: FakeGitSource
) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.procs.take_port(8000, "pid 4242 (nginx)")
    n.tick()
    assert n.rec.last is not None
    assert any("8000" in e and "nginx" in e for e in n.rec.last.errors)
    record = n.inventory.current.restarts[ReplicaKey("a", 0)]
    assert "nginx" in record.last_reason
    n.tick()  # next tick: backing off, the daemon itself is fine
    assert n.rec.last.plan.replicas[ReplicaKey("a", 0)].state in ("CrashLoopBackOff", "Starting")


def test_foreign_gpu_process_and_deleted_deployment(tmp_path: Path, source: FakeGitSource) -> None:
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.gpus.add_process(0, pid=4242)  # someone else's job on GPU 0
    n.tick()
    launch_env = n.procs.envs[ENGINE_A]
    assert launch_env["CUDA_VISIBLE_DEVICES"] == "1"
    source.commit({"a.yaml": None}, subject="retire a")
    n.tick()
    assert n.procs.stop_count(ENGINE_A) == 1
    assert ENGINE_A not in n.inventory.current.members


def test_every_line_of_a_tick_carries_its_reconcile_id(
    tmp_path: Path, source: FakeGitSource
) -> None:
    import io
    import json
    import logging

    from reconciler.daemon.log_format import JsonFormatter

    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.sync.sync(n.clock.now())
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("reconciler")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        result = n.rec.tick()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    started = [e for e in lines if e["msg"] == "started"]
    assert started, lines  # apply's own line, logged without passing the id around
    assert {e.get("reconcile_id") for e in lines} == {result.reconcile_id}
