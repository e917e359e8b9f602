"""Global placement: which nodes (and how many GPUs on each) every replica gets.

Every daemon computes this from the same revision and must get the same answer
without talking, so the only inputs are the desired state's documents. Agreement beats
stickiness: a placement that depended on what each node happened to apply before could
differ between a node that saw revision R1 and one that skipped it, and two nodes would
then claim the same replica or GPUs. Stability comes from consistent hashing instead:
each replica starts at its own point on a ring of the candidate nodes and takes the
first nodes with room, so adding, removing or resizing other deployments moves a replica
only when it loses a contest for capacity. To pin a replica for good, name its nodes
in `placement.nodes`.

The placement lock (DESIGN.md section 4) adds the one history every node shares, git: a
replica recorded in the revision's lock file stays on its locked nodes while they exist,
are not drained, still match the deployment and have the capacity; the rest are placed
by the rule above around them. A stale or missing lock only means less stickiness, never
disagreement: it is part of the revision. Cordoned nodes take no new replicas (locked
ones stay); drained nodes take none at all.

Order of placement: explicitly pinned deployments, then larger replicas first (less
fragmentation), then by name. Cost: O(log n) per replica to find its start, then a walk
that stops at the first node with room; a per-pool histogram of free GPUs answers
"nothing fits" without walking (1,000 nodes x 2,000 deployments: see bench/).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping

from reconciler.core.topology import ReplicaShape, candidate_nodes, replica_port, replica_shape
from reconciler.core.vocabulary import (
    Desired,
    LockedPlacement,
    Placement,
    ReplicaKey,
    ReplicaPlacement,
)
from schemas.v1alpha1 import ModelDeployment, Node

MAX_GPUS = 64  # per node, as the schema allows




def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest(), "big")


class _Pool:
    """The candidate nodes of one placement rule, on a hash ring, with a free-GPU histogram."""

    def __init__(self, nodes: list[Node], free: dict[str, int]) -> None:
        self.nodes = nodes
        ring = sorted((_hash("node", n.name), n.name) for n in nodes)
        self.points = [p for p, _ in ring]
        self.names = [name for _, name in ring]
        self.hist = [0] * (MAX_GPUS + 1)
        for n in nodes:
            self.hist[free[n.name]] += 1
        self.total_free = sum(free[n.name] for n in nodes)
        self.shapes: dict[tuple[int, int, int, str], ReplicaShape | str] = {}

    def count_fitting(self, need: int) -> int:
        return sum(self.hist[need:])

    def move(self, old_free: int, new_free: int) -> None:
        self.hist[old_free] -= 1
        self.hist[new_free] += 1
        self.total_free += new_free - old_free

    def shape(self, state: Desired, dep: ModelDeployment) -> ReplicaShape | str:
        par = dep.spec.parallelism
        key = (par.tensor, par.pipeline, par.data, dep.spec.executor)
        if key not in self.shapes:
            self.shapes[key] = replica_shape(state.cluster, dep, self.nodes)
        return self.shapes[key]

    def walk(self, key: str) -> Iterator[str]:
        """Candidate names in ring order starting at the replica's own point."""
        start = bisect.bisect_left(self.points, _hash("replica", key))
        names = self.names
        for i in range(start, len(names)):
            yield names[i]
        for i in range(start):
            yield names[i]


class _Placer:
    def __init__(self, state: Desired) -> None:
        self.state = state
        self.nodes = {n.name: n for n in state.cluster.spec.nodes}
        self.free = {n.name: n.gpus.count for n in state.cluster.spec.nodes}
        # per deployment: the nodes a locked replica may stay on, and its shape there
        self.lock_nodes: dict[tuple[str, ...], list[Node]] = {}
        self.lock_shapes: dict[tuple[str, ...], tuple[set[str], ReplicaShape | str]] = {}
        # cordoned and drained nodes take no new replica: they are in no pool
        self.closed = {
            n.name: ("drained" if n.drain else "cordoned")
            for n in state.cluster.spec.nodes
            if n.cordon or n.drain
        }
        self.pools: dict[tuple[str, ...], _Pool] = {}
        self.rules: dict[tuple[str, ...], _Pool] = {}
        self.pools_of: dict[str, list[_Pool]] = {name: [] for name in self.nodes}
        self.by_label: dict[tuple[str, str], set[str]] = {}
        for n in state.cluster.spec.nodes:
            for k, v in n.labels.items():
                self.by_label.setdefault((k, v), set()).add(n.name)

    @staticmethod
    def rule_of(dep: ModelDeployment) -> tuple[str, ...]:
        placement = dep.spec.placement
        if placement.nodes is not None:
            return ("nodes", *sorted(placement.nodes))
        return (
            "selector",
            *sorted(f"{k}={v}" for k, v in (placement.node_selector or {}).items()),
        )

    def pool(self, dep: ModelDeployment) -> _Pool:
        rule = self.rule_of(dep)
        cached = self.rules.get(rule)
        if cached is not None:
            return cached
        names = [n for n in self.matching(dep) if n not in self.closed]
        key = tuple(names)
        pool = self.pools.get(key)
        if pool is None:
            pool = _Pool([self.nodes[n] for n in names], self.free)
            self.pools[key] = pool
            for n in names:
                self.pools_of[n].append(pool)
        self.rules[rule] = pool
        return pool

    def matching(self, dep: ModelDeployment) -> list[str]:
        """Every node the deployment's placement rule matches, open or not."""
        placement = dep.spec.placement
        if placement.nodes is not None:
            wanted = set(placement.nodes)
            return [n for n in self.nodes if n in wanted]
        if placement.node_selector:
            sets = [self.by_label.get(item, set()) for item in placement.node_selector.items()]
            common = set.intersection(*sets) if sets else set()
            return [n for n in self.nodes if n in common]
        return list(self.nodes)

    def closed_note(self, dep: ModelDeployment) -> str:
        """'; 3 of 4 matching nodes are open (a800-3 drained)', or '' when none is closed."""
        if not self.closed:
            return ""
        matching = self.matching(dep)
        closed = [f"{n} {self.closed[n]}" for n in matching if n in self.closed]
        if not closed:
            return ""
        open_count = len(matching) - len(closed)
        return (
            f"; only {open_count} of {len(matching)} matching nodes take replicas "
            f"({', '.join(closed)}): uncordon or undrain a node, or add one"
        )

    def take(self, node: str, gpus: int) -> None:
        old = self.free[node]
        self.free[node] = old - gpus
        for pool in self.pools_of[node]:
            pool.move(old, old - gpus)


def _sort_key(item: tuple[str, ModelDeployment, ReplicaShape | str]) -> tuple[int, int, str]:
    name, dep, shape = item
    pinned = 0 if dep.spec.placement.nodes is not None else 1
    size = shape.gpus if isinstance(shape, ReplicaShape) else 0
    return (pinned, -size, name)


def place(state: Desired) -> Placement:
    placer = _Placer(state)
    cluster = state.cluster
    ray_blocks = cluster.spec.ports.ray.size // cluster.spec.ports.ray_block_size
    used_blocks: set[int] = set()
    placed: dict[ReplicaKey, ReplicaPlacement] = {}
    unschedulable: dict[ReplicaKey, str] = {}
    lock: Mapping[ReplicaKey, LockedPlacement] = state.placement_lock
    held_by: dict[str, set[str]] = {}  # deployment -> nodes its locked replicas hold
    for key in sorted(lock):
        kept = _keep_locked(placer, state, key, lock[key], ray_blocks, used_blocks)
        if kept is None:
            continue
        placed[key] = kept
        held_by.setdefault(key.deployment, set()).update(kept.nodes)
        if kept.ray_block is not None:
            used_blocks.add(kept.ray_block)
        for node in kept.nodes:
            if kept.gpus_per_node:
                placer.take(node, kept.gpus_per_node)

    items = []
    for name, dep in state.deployments.items():
        if dep.spec.suspend or dep.spec.replicas == 0:
            continue
        pool = placer.pool(dep)
        items.append((name, dep, pool.shape(state, dep)))
    for name, dep, shape in sorted(items, key=_sort_key):
        pool = placer.pool(dep)
        holding: set[str] = set(held_by.get(name, ()))
        for index in range(dep.spec.replicas):
            key = ReplicaKey(name, index)
            if key in placed:
                continue  # kept where the lock says
            if isinstance(shape, str):
                unschedulable[key] = f"unschedulable: {shape}{placer.closed_note(dep)}"
                continue
            chosen = _choose(placer, pool, shape, str(key), holding)
            if isinstance(chosen, str):
                unschedulable[key] = chosen + placer.closed_note(dep)
                continue
            block = None
            if len(chosen) > 1:
                block = _ray_block(str(key), ray_blocks, used_blocks)
                if block is None:
                    unschedulable[key] = "unschedulable: no free Ray port block"
                    continue
                used_blocks.add(block)
            for node in chosen:
                holding.add(node)
                if shape.gpus_per_node:
                    placer.take(node, shape.gpus_per_node)
            placed[key] = ReplicaPlacement(
                key=key,
                nodes=tuple(chosen),
                gpus_per_node=shape.gpus_per_node,
                port=replica_port(dep, index),
                ray_block=block,
            )
    # placed in order already: deployments by name within a priority class; re-sort by a
    # plain tuple (dataclass ordering is slow at this size)
    ordered = sorted(placed.items(), key=lambda kv: (kv[0].deployment, kv[0].index))
    return Placement(replicas=dict(ordered), unschedulable=unschedulable)


def _keep_locked(
    placer: _Placer,
    state: Desired,
    key: ReplicaKey,
    entry: LockedPlacement,
    ray_blocks: int,
    used_blocks: set[int],
) -> ReplicaPlacement | None:
    """The locked placement of a replica if it is still valid, else None (re-placed)."""
    dep = state.deployments.get(key.deployment)
    if dep is None or dep.spec.suspend or key.index >= dep.spec.replicas:
        return None
    nodes = entry.nodes
    if not nodes or len(set(nodes)) != len(nodes):
        return None
    if any(n not in placer.nodes or placer.closed.get(n) == "drained" for n in nodes):
        return None
    par = dep.spec.parallelism
    rule = placer.rule_of(dep)
    shape_key = (*rule, f"{par.tensor}/{par.pipeline}/{par.data}/{dep.spec.executor}")
    cached = placer.lock_shapes.get(shape_key)
    if cached is None:
        usable = placer.lock_nodes.get(rule)
        if usable is None:
            usable = [
                n for n in candidate_nodes(state.cluster, dep)
                if placer.closed.get(n.name) != "drained"
            ]
            placer.lock_nodes[rule] = usable
        cached = ({n.name for n in usable}, replica_shape(state.cluster, dep, usable))
        placer.lock_shapes[shape_key] = cached
    usable_names, shape = cached
    if not usable_names.issuperset(nodes):
        return None
    if isinstance(shape, str) or shape.nodes != len(nodes):
        return None
    if any(placer.free[n] < shape.gpus_per_node for n in nodes):
        return None
    block = None
    if len(nodes) > 1:
        if (
            entry.ray_block is not None
            and entry.ray_block < ray_blocks
            and entry.ray_block not in used_blocks
        ):
            block = entry.ray_block
        else:
            block = _ray_block(str(key), ray_blocks, used_blocks)
            if block is None:
                return None
    return ReplicaPlacement(
        key=key,
        nodes=nodes,
        gpus_per_node=shape.gpus_per_node,
        port=replica_port(dep, key.index),
        ray_block=block,
    )


def _choose(
    placer: _Placer, pool: _Pool, shape: ReplicaShape, key: str, holding: set[str]
) -> list[str] | str:
    need = shape.gpus_per_node
    if need == 0:
        # CPU engines take no GPU: spread replicas of a deployment over its nodes, and
        # share a node when there are more replicas than nodes
        names = list(pool.walk(key))
        if not names:
            return "unschedulable: no node matches the placement"
        fresh = [n for n in names if n not in holding]
        if shape.nodes == 1:
            return [(fresh or names)[0]]
        # a multi-node CPU replica (executor mp): one rank on each of distinct nodes
        if len(names) < shape.nodes:
            return f"unschedulable: needs {shape.nodes} nodes, {len(names)} match"
        held = [n for n in names if n in holding]
        return (fresh + held)[: shape.nodes]
    if pool.count_fitting(need) < shape.nodes:
        return (
            f"unschedulable: needs {shape.gpus} GPUs ({shape.nodes} node(s) x {need}), "
            f"{pool.total_free} free on matching nodes"
        )
    chosen: list[str] = []
    fallback: list[str] = []  # nodes already holding a replica of this deployment
    for name in pool.walk(key):
        if placer.free[name] < need:
            continue
        if name in holding:
            fallback.append(name)
            continue
        chosen.append(name)
        if len(chosen) == shape.nodes:
            return chosen
    return (chosen + fallback)[: shape.nodes]


def _ray_block(key: str, blocks: int, used: set[int]) -> int | None:
    """A block stable for this replica: its hash slot, probing linearly on collision."""
    if blocks <= 0:
        return None
    start = _hash("ray-block", key) % blocks
    for step in range(blocks):
        candidate = (start + step) % blocks
        if candidate not in used:
            return candidate
    return None
