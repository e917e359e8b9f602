"""Refused state changes through the whole tick: counted by (from, to) on the
Reconciler, reported on the tick result, exported as
reconciler_illegal_transitions_total{from,to}; the normal life of an engine (deploy,
ready, crash, backoff, restart, spec change, delete) crosses only edges of the table."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.vocabulary import RefusedTransition, ReplicaKey
from reconciler.daemon.metrics import Metrics
from reconciler.testing.git_source import FakeGitSource
from tests.integration.test_reconcile_fakes import CLUSTER, ENGINE_A, Node, deployment

KEY = ReplicaKey("a", 0)


def test_a_normal_life_crosses_only_table_edges(tmp_path: Path) -> None:
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    seen = []
    n.tick()
    seen.append(n.rec.states[KEY])
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    seen.append(n.rec.states[KEY])
    for _ in range(2):  # first crash: restarted at once; second: backoff
        n.procs.crash(ENGINE_A, 137)
        n.tick()
        seen.append(n.rec.states[KEY])
    n.clock.advance(11)
    n.tick()
    seen.append(n.rec.states[KEY])
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    source.commit({"a.yaml": deployment("a", 8000, max_len=2048)}, subject="change")
    n.tick()
    seen.append(n.rec.states[KEY])
    source.commit({"a.yaml": None}, subject="delete")
    n.tick()
    assert seen == ["Starting", "Ready", "Starting", "CrashLoopBackOff", "Starting", "Starting"]
    assert KEY not in n.rec.states
    assert n.rec.refused_transitions == {}


def test_a_refused_change_is_counted_by_edge_and_exported(tmp_path: Path) -> None:
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    n.procs.set_health(ENGINE_A, "ready")
    # a recorded state from which Ready is not reachable in one step (a bug elsewhere)
    n.rec.states[KEY] = "Pending"
    n.tick()
    last = n.rec.last
    assert last is not None
    assert last.refused_transitions == (RefusedTransition(KEY, "Pending", "Ready"),)
    assert last.plan.replicas[KEY].state == "Pending", "refused: the old state stays"
    assert n.rec.states[KEY] == "Pending"
    n.tick()
    assert n.rec.refused_transitions == {("Pending", "Ready"): 2}
    m = Metrics()
    m.illegal(n.rec.refused_transitions)
    m.illegal(n.rec.refused_transitions)  # published twice: counted once
    text = m.render().decode()
    assert 'reconciler_illegal_transitions_total{from="Pending",to="Ready"} 2.0' in text
