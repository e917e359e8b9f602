"""A multi-node replica over Ray (reconciler/core/fate_sharing.py): it forms in order
(head, members, then the engine; followers only join the leader's head at their own
hash) and lives and dies as one group."""

from __future__ import annotations

import pytest

from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    MarkReady,
    ObservedState,
    PeerReplica,
    RayView,
    ReplicaKey,
    Start,
)
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

KEY = ReplicaKey("r1", 0)
C = cluster(node("n0", gpus=8), node("n1", gpus=8))
D = deployment("r1", parallelism={"tensor": 8, "pipeline": 2})
H = spec_hash(C, D)
WANT = desired(C, D)
LEADER, FOLLOWER = place(WANT).replicas[KEY].nodes
HEAD = proc("r1", role="ray-head", spec_hash=H, gpus=tuple(range(8)))
ENGINE = proc("r1", role="engine", spec_hash=H, gpus=())
WORKER = proc("r1", role="ray-worker", spec_hash=H, gpus=tuple(range(8)))


def test_multi_node_leader_starts_the_head_then_the_engine_with_ray_address() -> None:
    # leader, nothing running: start the Ray head with all 8 GPUs
    p = plan(WANT, observed(LEADER, gpus(8)), EMPTY, 0.0, ctx(LEADER))
    assert kinds(p) == ["Start:r1/0/ray-head"]
    head = p.actions[0]
    assert isinstance(head, Start)
    argv = list(head.launch.argv)
    assert "--head" in argv and argv[argv.index("--num-gpus") + 1] == "8"
    assert head.launch.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert head.launch.env["VLLM_HOST_IP"] == argv[argv.index("--node-ip-address") + 1]
    # all members in: start vLLM with the Ray executor and RAY_ADDRESS
    # (the members are the placed nodes' addresses: one elsewhere would be waited out)
    both = RayView(("198.18.0.10", "198.18.0.11"), 16)
    p = plan(WANT, observed(LEADER, gpus(8), HEAD, ray={KEY: both}), EMPTY, 2.0, ctx(LEADER))
    assert kinds(p) == ["Start:r1/0/engine"]
    eng = p.actions[0]
    assert isinstance(eng, Start)
    assert "--distributed-executor-backend" in eng.launch.argv
    assert eng.launch.env["RAY_ADDRESS"].endswith(":" + argv[argv.index("--port") + 1])
    assert eng.launch.gpus == ()


STALE = {KEY: PeerReplica(spec_hash="0ld0ld0ld0ld", ready=True)}
FRESH = {KEY: PeerReplica(spec_hash=H, ready=False, head_up=True)}


@pytest.mark.parametrize(
    ("where", "obs", "expected", "reason"),
    [
        # head running, only itself in Ray: wait, naming what is missing
        pytest.param(LEADER, observed(LEADER, gpus(8), HEAD,
                                      ray={KEY: RayView(("198.18.0.10",), 8)}),
                     [], "1/2 nodes, 8/16 GPUs", id="leader-waits-for-ray-members"),
        # the follower waits for the leader's head at the same hash, then joins
        pytest.param(FOLLOWER, observed(FOLLOWER, gpus(8)), [], "waiting for leader",
                     id="follower-waits-for-the-leader"),
        pytest.param(FOLLOWER, observed(FOLLOWER, gpus(8), peers=STALE), [], None,
                     id="follower-ignores-a-head-at-another-hash"),
        pytest.param(FOLLOWER, observed(FOLLOWER, gpus(8), peers=FRESH),
                     ["Start:r1/0/ray-worker"], None, id="follower-joins-the-head-at-its-hash"),
    ],
)
def test_multi_node_forms_in_order(
    where: str, obs: ObservedState, expected: list[str], reason: str | None
) -> None:
    p = plan(WANT, obs, EMPTY, 1.0 if where == LEADER else 0.0, ctx(where))
    assert kinds(p) == expected
    if not expected:
        assert p.empty
    if reason is not None:
        assert reason in p.replicas[KEY].reason


def test_multi_node_member_death_restarts_group_locally() -> None:
    dead_head = proc("r1", role="ray-head", spec_hash=H, running=False, exit_code=1)
    p = plan(WANT, observed(LEADER, gpus(8), dead_head, ENGINE), EMPTY, 0.0, ctx(LEADER))
    # the head is reaped, the engine that depended on it is stopped; the group re-forms
    # after a backoff, not in this tick (followers must first leave the old cluster)
    assert kinds(p) == ["Reap:r1/0/ray-head", "Stop:r1/0/engine"]
    assert p.replicas[KEY].state == "CrashLoopBackOff"


DOWN = {KEY: PeerReplica(H, ready=False, head_up=False)}


@pytest.mark.parametrize(
    ("where", "obs", "expected", "first_reason"),
    [
        pytest.param(LEADER, observed(LEADER, gpus(8), HEAD, ENGINE,
                                      ray={KEY: RayView(("198.18.0.10", "198.18.0.11"), 16)}),
                     ["MarkReady:r1/0"], None, id="whole-group-serves"),
        pytest.param(LEADER, observed(LEADER, gpus(8), HEAD, ENGINE, ray={KEY: RayView(("a",), 8)}),
                     ["Stop:r1/0/engine", "Stop:r1/0/ray-head"], "1/2 nodes alive",
                     id="lost-member-tears-down-the-replica-on-the-leader"),
        # the follower sees the leader's head down (or at another hash) and leaves too
        pytest.param(FOLLOWER, observed(FOLLOWER, gpus(8), WORKER, peers=DOWN),
                     ["Stop:r1/0/ray-worker"], None, id="follower-leaves-when-the-head-is-down"),
        # leader unreachable: no guess
        pytest.param(FOLLOWER, observed(FOLLOWER, gpus(8), WORKER), [], None,
                     id="leader-unreachable-no-guess"),
    ],
)
def test_multi_node_lost_member_tears_down_the_replica(
    where: str, obs: ObservedState, expected: list[str], first_reason: str | None
) -> None:
    p = plan(WANT, obs, EMPTY, 0.0, ctx(where))
    if first_reason is not None:  # the teardown may go on (the worker's own stop...)
        assert kinds(p)[: len(expected)] == expected
        assert first_reason in p.actions[0].reason
    else:
        assert kinds(p) == expected
    if expected == ["MarkReady:r1/0"]:
        assert p.actions == (MarkReady(KEY, "r1/0: ready"),)
