"""Global placement: which nodes (and how many GPUs on each) every replica gets.

Every daemon computes this from the same revision and must get the same answer
without talking, so the only inputs are the desired state's documents. Agreement beats
stickiness: a placement that depended on what each node happened to apply before could
differ between a node that saw revision R1 and one that skipped it, and two nodes would
then claim the same replica or GPUs. Stability comes from rendezvous hashing instead:
each replica ranks nodes by hash(replica, node), so adding, removing or resizing other
deployments moves a replica only when it loses a contest for capacity. To pin a replica
for good, name its nodes in `placement.nodes`.

Order of placement: explicitly pinned deployments, then larger replicas first (less
fragmentation), then by name.
"""

from __future__ import annotations

import hashlib

from reconciler.loader import DesiredState
from reconciler.model import Placement, ReplicaKey, ReplicaPlacement
from reconciler.topology import ReplicaShape, candidate_nodes, replica_port, replica_shape
from schemas.v1alpha1 import ModelDeployment


def _weight(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def _order(state: DesiredState) -> list[tuple[str, ModelDeployment, ReplicaShape | str]]:
    items = []
    for name, dep in state.deployments.items():
        if dep.spec.suspend or dep.spec.replicas == 0:
            continue
        items.append((name, dep, replica_shape(state.cluster, dep)))

    def sort_key(item: tuple[str, ModelDeployment, ReplicaShape | str]) -> tuple[int, int, str]:
        name, dep, shape = item
        pinned = 0 if dep.spec.placement.nodes is not None else 1
        size = shape.gpus if isinstance(shape, ReplicaShape) else 0
        return (pinned, -size, name)

    return sorted(items, key=sort_key)


def place(state: DesiredState) -> Placement:
    cluster = state.cluster
    free = {n.name: n.gpus.count for n in cluster.spec.nodes}
    cpu_taken: dict[str, int] = {n.name: 0 for n in cluster.spec.nodes}
    ray_blocks = cluster.spec.ports.ray.size // cluster.spec.ports.ray_block_size
    used_blocks: set[int] = set()
    placed: dict[ReplicaKey, ReplicaPlacement] = {}
    unschedulable: dict[ReplicaKey, str] = {}

    for name, dep, shape in _order(state):
        candidates = candidate_nodes(cluster, dep)
        holding: dict[str, int] = {}
        for index in range(dep.spec.replicas):
            key = ReplicaKey(name, index)
            if isinstance(shape, str):
                unschedulable[key] = f"unschedulable: {shape}"
                continue

            def rank(
                node: str, key: ReplicaKey = key, holding: dict[str, int] = holding
            ) -> tuple[int, int]:
                # spread replicas of one deployment, then rendezvous order
                return (holding.get(node, 0), -_weight(str(key), node))

            if shape.gpus_per_node == 0:
                fits = [n.name for n in candidates if cpu_taken[n.name] == 0]
                if not fits:
                    unschedulable[key] = (
                        f"unschedulable: needs a node without another CPU engine; "
                        f"{len(candidates)} matching node(s) all busy"
                    )
                    continue
                chosen = [min(fits, key=rank)]
                cpu_taken[chosen[0]] += 1
            else:
                fits = [n.name for n in candidates if free[n.name] >= shape.gpus_per_node]
                if len(fits) < shape.nodes:
                    total_free = sum(free[n.name] for n in candidates)
                    unschedulable[key] = (
                        f"unschedulable: needs {shape.gpus} GPUs ({shape.nodes} node(s) x "
                        f"{shape.gpus_per_node}), {total_free} free on matching nodes"
                    )
                    continue
                chosen = sorted(fits, key=rank)[: shape.nodes]
                for node in chosen:
                    free[node] -= shape.gpus_per_node
            for node in chosen:
                holding[node] = holding.get(node, 0) + 1
            block = None
            if len(chosen) > 1:
                block = _ray_block(str(key), ray_blocks, used_blocks)
                if block is None:
                    unschedulable[key] = "unschedulable: no free Ray port block"
                    for node in chosen:
                        free[node] += shape.gpus_per_node
                    continue
                used_blocks.add(block)
            placed[key] = ReplicaPlacement(
                key=key,
                nodes=tuple(chosen),
                gpus_per_node=shape.gpus_per_node,
                port=replica_port(dep, index),
                ray_block=block,
            )
    return Placement(replicas=dict(sorted(placed.items())), unschedulable=unschedulable)


def _ray_block(key: str, blocks: int, used: set[int]) -> int | None:
    """A block stable for this replica: its hash slot, probing linearly on collision."""
    if blocks <= 0:
        return None
    start = _weight("ray-block", key) % blocks
    for step in range(blocks):
        candidate = (start + step) % blocks
        if candidate not in used:
            return candidate
    return None
