"""Rolling out a new spec hash (reconciler/core/rollout.py): what changes the hash, how a
replaced engine lands on its GPUs, RollingUpdate in index order within maxUnavailable,
and Recreate."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import PeerReplica, ReplicaKey, Start, Stop
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds


def test_spec_change_replaces_engine_on_the_same_gpus_with_reason() -> None:
    c = cluster(node("n0"))
    old = deployment("llama", engine={"maxModelLen": 4096}, parallelism={"tensor": 2})
    new = deployment("llama", engine={"maxModelLen": 8192}, parallelism={"tensor": 2})
    h_old, h_new = spec_hash(c, old), spec_hash(c, new)
    assert h_old != h_new
    obs = observed("n0", gpus(8), proc("llama", spec_hash=h_old, gpus=(4, 5)))
    p = plan(desired(c, new), obs, EMPTY, 10.0, ctx("n0"))
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
    stop = p.actions[0]
    assert isinstance(stop, Stop) and f"hash {h_old} -> {h_new}" in stop.reason
    start = p.actions[1]
    assert isinstance(start, Start) and start.launch.gpus == (4, 5)


def test_fields_that_do_not_reach_the_engine_do_not_restart_it() -> None:
    c = cluster(node("n0"), node("n1"))
    a = deployment("llama", replicas=1, rollout={"strategy": "RollingUpdate"})
    b = deployment("llama", replicas=2, rollout={"strategy": "Recreate"},
                   probes={"periodSeconds": 30})
    assert spec_hash(c, a) == spec_hash(c, b)


ROLL_C = cluster(node("n0", gpus=1), node("n1", gpus=1), node("n2", gpus=1))
ROLL_OLD = deployment("llama", replicas=3, engine={"maxModelLen": 1024})
ROLL_NEW = deployment("llama", replicas=3, engine={"maxModelLen": 2048})
H_OLD, H_NEW = spec_hash(ROLL_C, ROLL_OLD), spec_hash(ROLL_C, ROLL_NEW)
WHERE = {k.index: p.nodes[0] for k, p in place(desired(ROLL_C, ROLL_NEW)).replicas.items()}


@pytest.mark.parametrize(
    ("index", "replica0_at", "expected", "reason"),
    [
        # replica 1's node: replica 0 not yet ready at the new hash -> keep serving
        pytest.param(1, H_OLD, [], "rolling update: waiting", id="replica-1-waits-for-0"),
        pytest.param(1, H_NEW, ["Stop:llama/1/engine", "Start:llama/1/engine"], None,
                     id="replica-1-goes-once-0-is-ready-at-the-new-hash"),
        # replica 0 goes first without waiting
        pytest.param(0, None, ["Stop:llama/0/engine"], None, id="replica-0-goes-first"),
    ],
)
def test_rolling_update_goes_in_index_order(
    index: int, replica0_at: str | None, expected: list[str], reason: str | None
) -> None:
    here = WHERE[index]
    peers = {} if replica0_at is None else {ReplicaKey("llama", 0): PeerReplica(replica0_at, True)}
    obs = observed(here, gpus(1), proc("llama", index, spec_hash=H_OLD, port=8000 + index),
                   peers=peers)
    p = plan(desired(ROLL_C, ROLL_NEW), obs, EMPTY, 0.0, ctx(here))
    # replica 0's node also starts the new engine; the table checks what comes first
    assert (kinds(p)[:1] if index == 0 else kinds(p)) == expected
    if not expected:
        assert p.empty
    if reason is not None:
        assert reason in p.replicas[ReplicaKey("llama", index)].reason


@pytest.mark.parametrize(
    ("rollout", "replicas", "gpu_count", "expected"),
    [
        pytest.param({"maxUnavailable": 2}, 3, 4, ["Stop:llama/0/engine", "Stop:llama/1/engine"],
                     id="max-unavailable-two-lets-two-go-at-once"),
        pytest.param({"strategy": "Recreate"}, 2, 2,
                     ["Stop:llama/0/engine", "Stop:llama/1/engine",
                      "Start:llama/0/engine", "Start:llama/1/engine"],
                     id="recreate-stops-every-old-member-then-starts"),
    ],
)
def test_strategies_on_one_node(
    rollout: dict[str, Any], replicas: int, gpu_count: int, expected: list[str]
) -> None:
    c = cluster(node("n0", gpus=gpu_count))
    old = deployment("llama", replicas=replicas, engine={"maxModelLen": 1024}, rollout=rollout)
    new = deployment("llama", replicas=replicas, engine={"maxModelLen": 2048}, rollout=rollout)
    procs = [proc("llama", i, spec_hash=spec_hash(c, old), gpus=(i,), port=8000 + i, pid=100 + i)
             for i in range(replicas)]
    p = plan(desired(c, new), observed("n0", gpus(gpu_count), *procs), EMPTY, 0.0, ctx("n0"))
    if rollout.get("strategy") == "Recreate":
        assert [type(a).__name__ for a in p.actions] == ["Stop", "Stop", "Start", "Start"]
        assert kinds(p) == expected
    else:
        assert [k for k in kinds(p) if k.startswith("Stop:")] == expected

