"""The spec hash changes exactly when what the processes of a replica receive changes.

Each mutation edits one field of a multi-node deployment or its Cluster; the launches of
every member (Ray head and driver on the leader, a Ray worker on the follower) are built
for one fixed placement before and after. The hash must change if and only if some argv
or environment changed (the ownership markers, which carry the hash itself, left out).
"""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.launch import NodeContext, engine_launch, ray_launch
from reconciler.core.spec_hash import changed_fields, hash_material, spec_hash
from reconciler.core.vocabulary import ReplicaKey, ReplicaPlacement
from schemas.v1alpha1 import Cluster, ModelDeployment
from testrigs.builders import cluster, deployment, node

BASE_DEP: dict[str, Any] = {
    "parallelism": {"tensor": 4, "pipeline": 2},
    "engine": {"maxModelLen": 4096, "extraArgs": ["--trust-remote-code"], "env": {"A": "1"}},
}
BASE_CLUSTER: dict[str, Any] = {
    "network": {"ncclSocketIfname": "eth2"},
    "engineDefaults": {"env": {"B": "2"}},
}


def _build(
    dep_edit: dict[str, Any], cluster_edit: dict[str, Any]
) -> tuple[Cluster, ModelDeployment]:
    c = cluster(node("n0", 4), node("n1", 4), **{**BASE_CLUSTER, **cluster_edit})
    spec = dict(BASE_DEP)
    for key, value in dep_edit.items():
        if key == "model":
            spec["model"] = {"path": "/models/m", "servedName": "m", **value}
        else:
            spec[key] = value
    return c, deployment("m", **spec)


def _launches(c: Cluster, d: ModelDeployment) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    p = ReplicaPlacement(ReplicaKey("m", 0), ("n0", "n1"), 4, d.spec.port, ray_block=0)
    h = spec_hash(c, d)
    out = []
    for who, build in (("n0", ray_launch), ("n0", engine_launch), ("n1", ray_launch)):
        ctx = NodeContext(name=who, python="python3", ray="ray")
        launch = build(ctx, c, d, p, h, (0, 1, 2, 3))
        env = {k: v for k, v in launch.env.items() if not k.startswith("RECONCILER_")}
        out.append((tuple(launch.argv), env))
    return out


ARCH = {"parameters": 7e9, "numLayers": 32, "numKvHeads": 8, "headDim": 128}
MUTATIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # reach no process
    ("weightsDtype", {"model": {"weightsDtype": "bfloat16"}}, {}),
    ("architecture", {"model": {"architecture": ARCH}}, {}),
    ("fit override", {"fit": {"override": True, "reason": "measured"}}, {}),
    ("replicas", {"replicas": 3}, {}),
    ("rollout", {"rollout": {"strategy": "Recreate"}}, {}),
    ("probes", {"probes": {"periodSeconds": 9, "startupTimeoutSeconds": 99}}, {}),
    ("suspend", {"suspend": True}, {}),
    ("placement", {"placement": {"nodes": ["n0", "n1"]}}, {}),
    ("startup timeout default", {}, {"engineDefaults": {"env": {"B": "2"},
                                                          "startupTimeoutSeconds": 99}}),
    ("ray range end", {}, {"ports": {"ray": {"start": 20000, "end": 20999}}}),
    # reach the processes
    ("served name", {"model": {"servedName": "other"}}, {}),
    ("model path", {"model": {"path": "/models/n"}}, {}),
    ("tensor", {"parallelism": {"tensor": 2, "pipeline": 4}}, {}),
    ("max model len", {"engine": {"maxModelLen": 8192}}, {}),
    ("extra args", {"engine": {"extraArgs": ["--enforce-eager"]}}, {}),
    ("engine env", {"engine": {"maxModelLen": 4096, "env": {"A": "2"}}}, {}),
    ("utilization", {"engine": {"maxModelLen": 4096, "gpuMemoryUtilization": 0.8}}, {}),
    ("port", {"port": 8001}, {}),
    ("nccl interface", {}, {"network": {"ncclSocketIfname": "eth3"}}),
    ("default env", {}, {"engineDefaults": {"env": {"B": "3"}}}),
    ("default utilization", {}, {"engineDefaults": {"env": {"B": "2"},
                                                      "gpuMemoryUtilization": 0.7}}),
    ("ray range start", {}, {"ports": {"ray": {"start": 30000, "end": 39999}}}),
    ("ray block size", {}, {"ports": {"rayBlockSize": 200}}),
]


@pytest.mark.parametrize("name,dep_edit,cluster_edit", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_hash_moves_exactly_with_what_the_processes_receive(
    name: str, dep_edit: dict[str, Any], cluster_edit: dict[str, Any]
) -> None:
    c0, d0 = _build({}, {})
    c1, d1 = _build(dep_edit, cluster_edit)
    received_changed = _launches(c0, d0) != _launches(c1, d1)
    hash_changed = spec_hash(c0, d0) != spec_hash(c1, d1)
    assert hash_changed == received_changed, (name, received_changed)


def test_changed_fields_name_what_moved_the_hash() -> None:
    c0, d0 = _build({}, {})
    c1, d1 = _build({"engine": {**BASE_DEP["engine"], "maxModelLen": 8192}, "port": 8001}, {})
    assert changed_fields(hash_material(c0, d0), hash_material(c1, d1)) == [
        "engine.maxModelLen",
        "port",
    ]
