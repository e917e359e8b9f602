"""What every node runs once a revision is applied, and in which order it gets there.

`plan()` answers "what does this node do next"; a reviewer of a pull request wants the
end state: for every member a node will run (engine, Ray head, Ray worker) the exact
argv, environment, GPUs and port, then the cluster-wide order in which a replica forms.
Pure: the GPUs are those an empty node would assign (first free, in member order).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.launch import (
    NodeContext,
    engine_launch,
    mp_master_port,
    mp_multi_node,
    ray_launch,
    ray_ports,
)
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Desired,
    LaunchSpec,
    MemberKey,
    Placement,
    ReplicaPlacement,
    Role,
)


@dataclass(frozen=True)
class ConvergedMember:
    launch: LaunchSpec
    placement: ReplicaPlacement

    @property
    def member(self) -> MemberKey:
        return self.launch.member


def _roles(desired: Desired, p: ReplicaPlacement, node: str) -> list[tuple[Role, bool]]:
    """(role, takes GPUs) of each member `node` runs for replica `p`, start order."""
    dep = desired.deployments[p.key.deployment]
    if not p.multi_node or mp_multi_node(dep, p):
        return [("engine", True)]
    if p.leader == node:
        return [("ray-head", True), ("engine", False)]  # the driver uses the head's GPUs
    return [("ray-worker", True)]


def node_members(
    desired: Desired, placement: Placement, ctx: NodeContext
) -> list[ConvergedMember]:
    out: list[ConvergedMember] = []
    next_gpu = 0
    for p in sorted(placement.on_node(ctx.name), key=lambda p: p.key):
        dep = desired.deployments[p.key.deployment]
        h = spec_hash(desired.cluster, dep)
        for role, takes in _roles(desired, p, ctx.name):
            gpus: tuple[int, ...] = ()
            if takes and p.gpus_per_node:
                gpus = tuple(range(next_gpu, next_gpu + p.gpus_per_node))
                next_gpu += p.gpus_per_node
            build = engine_launch if role == "engine" else ray_launch
            out.append(ConvergedMember(build(ctx, desired.cluster, dep, p, h, gpus), p))
    return out


def replica_steps(desired: Desired, p: ReplicaPlacement) -> list[str]:
    """How a replica forms across its nodes, in order (the daemons enforce this order)."""
    dep = desired.deployments[p.key.deployment]
    nodes = {n.name: n for n in desired.cluster.spec.nodes}
    key = p.key
    if not p.multi_node:
        return [f"{p.leader}: start {key} engine on port {p.port}"]
    leader = nodes[p.leader]
    followers = p.nodes[1:]
    if mp_multi_node(dep, p):
        port = mp_master_port(desired.cluster, p)
        steps = [
            f"{p.leader}: start {key} engine rank 0 (serves port {p.port}; rendezvous "
            f"{leader.address}:{port})"
        ]
        steps += [
            f"{n}: start {key} engine rank {i} --headless once the leader's engine runs"
            for i, n in enumerate(followers, start=1)
        ]
        return steps
    assert p.ray_block is not None
    gcs = f"{leader.address}:{ray_ports(desired.cluster, p.ray_block).gcs}"
    steps = [f"{p.leader}: start {key} ray-head (GCS {gcs}, {p.gpus_per_node} GPUs)"]
    steps += [
        f"{n}: start {key} ray-worker joining {gcs} ({p.gpus_per_node} GPUs) once the "
        "head runs"
        for n in followers
    ]
    steps.append(
        f"{p.leader}: start {key} engine (vLLM driver, port {p.port}) once "
        f"{len(p.nodes)} nodes / {p.gpus_per_node * len(p.nodes)} GPUs have joined"
    )
    return steps
