"""plan() as a whole: what a node starts from nothing, leaves alone, stops because it is
no longer wanted, and what it refuses to do (no desired state, not in the Cluster, a
model outside the allowed roots)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.core.launch import NodeContext
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Inventory,
    MarkReady,
    MemberKey,
    ReplicaKey,
    RestartRecord,
    Start,
)
from schemas.v1alpha1 import ModelDeployment
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

LLAMA = ReplicaKey("llama", 0)


def test_single_node_start_from_empty() -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("llama", parallelism={"tensor": 2})
    p = plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    assert kinds(p) == ["Start:llama/0/engine"]
    start = p.actions[0]
    assert isinstance(start, Start)
    launch = start.launch
    assert launch.gpus == (0, 1)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert launch.env["VLLM_HOST_IP"] == "198.18.0.10"
    argv = list(launch.argv)
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--distributed-executor-backend" in argv  # world size 2 on one node
    assert p.replicas[LLAMA].state == "Starting"


@pytest.mark.parametrize(
    ("inventory", "actions"),
    [
        pytest.param(EMPTY, [MarkReady], id="first-seen-ready-is-marked"),
        pytest.param(Inventory(restarts={LLAMA: RestartRecord(ready_since=50.0)}), [],
                     id="already-marked-is-left-alone"),
    ],
)
def test_running_ready_engine_is_left_alone_and_marked_ready_once(
    inventory: Inventory, actions: list[type]
) -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    obs = observed("n0", gpus(8), proc("llama", spec_hash=spec_hash(c, d), gpus=(0,)))
    p = plan(desired(c, d), obs, inventory, 100.0, ctx("n0"))
    assert p.empty
    assert [type(a) for a in p.actions] == actions
    assert p.replicas[LLAMA].state == "Ready"


@pytest.mark.parametrize(
    ("wanted", "why"),
    [
        pytest.param(None, "no longer in the desired state", id="deleted"),
        pytest.param(deployment("llama", suspend=True), "suspended", id="suspended"),
    ],
)
def test_deleted_and_suspended_deployments_are_stopped(
    wanted: ModelDeployment | None, why: str
) -> None:
    c = cluster(node("n0"))
    h = spec_hash(c, deployment("llama"))
    obs = observed("n0", gpus(8), proc("llama", spec_hash=h))
    p = plan(desired(c, *([wanted] if wanted else [])), obs, EMPTY, 0.0, ctx("n0"))
    assert kinds(p) == ["Stop:llama/0/engine"]
    assert why in p.actions[0].reason


def test_no_desired_state_touches_nothing() -> None:
    obs = observed("n0", gpus(8), proc("llama", spec_hash="abc"))
    p = plan(None, obs, EMPTY, 0.0, ctx("n0"))
    assert p.actions == () and p.notes


def test_node_missing_from_cluster_runs_nothing_and_says_so() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    p = plan(desired(c, d), observed("stranger", gpus(8)), EMPTY, 0.0, ctx("stranger"))
    assert p.empty and any("not in the Cluster" in n for n in p.notes)


def test_memberkey_slug_round_trip() -> None:
    m = MemberKey(ReplicaKey("deep-seek", 3), "ray-worker")
    assert MemberKey.from_slug(m.slug) == m


INSIDE = replace(ctx("n0"), allowed_model_roots=("/models",))
OUTSIDE = replace(ctx("n0"), allowed_model_roots=("/srv/models", "/data"))


@pytest.mark.parametrize(
    ("dep", "node_ctx", "expected", "reason"),
    [
        pytest.param(deployment("llama"), INSIDE, ["Start:llama/0/engine"], None,
                     id="inside-the-roots-starts"),
        pytest.param(deployment("llama"), OUTSIDE, [],
                     "outside this node's allowed model roots", id="outside-is-refused"),
        pytest.param(deployment("x", model={"path": "/models2/x", "servedName": "x"}), INSIDE,
                     [], None, id="a-sibling-with-the-same-prefix-is-outside"),
    ],
)
def test_model_path_outside_allowed_roots_is_refused(
    dep: ModelDeployment, node_ctx: NodeContext, expected: list[str], reason: str | None
) -> None:
    c = cluster(node("n0"))
    p = plan(desired(c, dep), observed("n0", gpus(8)), EMPTY, 0.0, node_ctx)
    assert kinds(p) == expected
    if not expected:
        assert p.empty
    if reason is not None:
        assert reason in p.replicas[ReplicaKey("llama", 0)].reason
