"""GPUs in the plan: which a member gets, which it never gets (unhealthy, held by a
process we don't own), what the node declares against what it has, and a replica that
fits nowhere, said with numbers."""

from __future__ import annotations

import pytest

from reconciler.core.plan import plan
from reconciler.core.vocabulary import GpuInventory, ReplicaKey, Start
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed
from tests.unit.core.plan_helpers import EMPTY

LLAMA = ReplicaKey("llama", 0)


@pytest.mark.parametrize(
    ("tensor", "started_on", "reasons"),
    [
        pytest.param(2, None, ("pid 4242", "needs 2 GPU(s), 1 usable"),
                     id="two-needed-one-usable-waits-naming-the-stranger"),
        pytest.param(1, (0,), (), id="one-needed-gets-the-free-one"),
    ],
)
def test_foreign_process_gpu_is_never_assigned(
    tensor: int, started_on: tuple[int, ...] | None, reasons: tuple[str, ...]
) -> None:
    c = cluster(node("n0", gpus=2))
    d = deployment("llama", parallelism={"tensor": tensor})
    obs = observed("n0", gpus(2, pids={1: (4242,)}), foreign=frozenset({4242}))
    p = plan(desired(c, d), obs, EMPTY, 0.0, ctx("n0"))
    if started_on is None:
        assert p.empty
        status = p.replicas[LLAMA]
        assert status.state == "Pending"
        assert all(r in status.reason for r in reasons)
    else:
        start = p.actions[0]
        assert isinstance(start, Start) and start.launch.gpus == started_on


@pytest.mark.parametrize(
    ("found", "note", "pending"),
    [
        pytest.param(gpus(7), "declared 8, found 7", True, id="count-drift"),
        pytest.param(gpus(8, memory_gib=40), "memory drift", False, id="memory-drift"),
    ],
)
def test_declared_versus_observed_gpu_drift(found: GpuInventory, note: str, pending: bool) -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("big", parallelism={"tensor": 8})
    p = plan(desired(c, d), observed("n0", found), EMPTY, 0.0, ctx("n0"))
    assert any(note in n for n in p.notes)
    if pending:
        assert p.empty and p.replicas[ReplicaKey("big", 0)].state == "Pending"


def test_oversubscription_is_reported_with_numbers() -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("llama", replicas=3, parallelism={"tensor": 4})
    p = plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    assert sorted(str(a.member) for a in p.actions if isinstance(a, Start)) == [
        "llama/0/engine", "llama/1/engine"]
    starts = [a for a in p.actions if isinstance(a, Start)]
    assert {g for a in starts for g in a.launch.gpus} == set(range(8))
    status = p.replicas[ReplicaKey("llama", 2)]
    assert status.state == "Pending"
    assert "needs 4 GPUs" in status.reason and "0 free on matching nodes" in status.reason


def test_multi_node_unschedulable_reason() -> None:
    c = cluster(node("n0", gpus=8), node("n1", gpus=8))
    big = deployment("r1", parallelism={"tensor": 8, "pipeline": 2})
    other = deployment("small", port=8010, parallelism={"tensor": 8}, placement={"nodes": ["n1"]})
    p = plan(desired(c, big, other), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    reason = p.replicas[ReplicaKey("r1", 0)].reason
    assert "needs 16 GPUs" in reason and "8 free on matching nodes" in reason
