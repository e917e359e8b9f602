"""Checks that span documents: names, placement, ports, parallelism against capacity."""

from __future__ import annotations

from reconciler.core.errors import Problem
from reconciler.core.topology import (
    NodeStats,
    ReplicaShape,
    candidate_nodes,
    node_stats,
    port_block,
    replica_shape,
)
from reconciler.desired.checks import more_checks
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import Cluster, ModelDeployment


def cross_check(
    cluster_doc: Document,
    cluster: Cluster,
    deployments: list[tuple[Document, ModelDeployment]],
) -> list[Problem]:
    problems: list[Problem] = []
    spec = cluster.spec
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        if node.name in names:
            problems.append(
                cluster_doc.problem(
                    ("spec", "nodes", i, "name"),
                    f"duplicate node name {node.name!r} (also nodes[{names[node.name]}])",
                )
            )
        names.setdefault(node.name, i)
        if node.address in addresses:
            problems.append(
                cluster_doc.problem(
                    ("spec", "nodes", i, "address"),
                    f"address {node.address} is also used by nodes[{addresses[node.address]}]"
                    " (Ray and vLLM need a unique IP per node)",
                )
            )
        addresses.setdefault(node.address, i)
        if node.status_port in spec.ports.engine:
            problems.append(
                cluster_doc.problem(
                    ("spec", "nodes", i, "statusPort"),
                    f"status port {node.status_port} lies inside the engine port range",
                )
            )
    ray = spec.ports.ray
    if ray.size < spec.ports.ray_block_size:
        problems.append(
            cluster_doc.problem(
                ("spec", "ports", "ray"),
                f"ray range holds {ray.size} ports, fewer than one block "
                f"({spec.ports.ray_block_size})",
            )
        )
    engine_range = spec.ports.engine
    if engine_range.start <= ray.end and ray.start <= engine_range.end:
        problems.append(
            cluster_doc.problem(("spec", "ports"), "engine and ray port ranges overlap")
        )

    multi_node_replicas = 0
    claimed: list[tuple[range, frozenset[str], str, Document]] = []
    claimants: dict[int, list[int]] = {}  # port -> indices into `claimed`
    for doc, dep in deployments:
        dspec = dep.spec
        placement = dspec.placement
        if placement.nodes is not None:
            for j, name in enumerate(placement.nodes):
                if name not in names:
                    known = ", ".join(sorted(names))
                    problems.append(
                        doc.problem(
                            ("spec", "placement", "nodes", j),
                            f"no node named {name!r} in the Cluster (known: {known})",
                        )
                    )
        candidates = candidate_nodes(cluster, dep)
        if placement.node_selector is not None and not candidates:
            problems.append(
                doc.problem(
                    ("spec", "placement", "nodeSelector"),
                    f"no node carries all of the labels {placement.node_selector}",
                )
            )
        block = port_block(dep)
        if block.start not in engine_range or block.stop - 1 not in engine_range:
            problems.append(
                doc.problem(
                    ("spec", "port"),
                    f"ports {block.start}-{block.stop - 1} (one per replica) must lie in the "
                    f"cluster's engine range {engine_range.start}-{engine_range.end}",
                )
            )
        cand_names = node_stats(cluster, candidates).names
        # only the earlier deployments that claim one of these ports, in claim order (a
        # scan of all of them was quadratic in deployments)
        rivals = sorted({i for port in block for i in claimants.get(port, ())})
        for other_block, other_nodes, other_name, _ in (claimed[i] for i in rivals):
            overlap = set(block) & set(other_block)
            if overlap and cand_names & other_nodes:
                problems.append(
                    doc.problem(
                        ("spec", "port"),
                        f"port {min(overlap)} is also used by deployment {other_name!r} on "
                        f"node(s) {', '.join(sorted(cand_names & other_nodes))}",
                    )
                )
        for port in block:
            claimants.setdefault(port, []).append(len(claimed))
        claimed.append((block, cand_names, dep.metadata.name, doc))

        if not candidates:
            continue
        shape = replica_shape(cluster, dep, candidates)
        if isinstance(shape, str):
            problems.append(doc.problem(("spec", "parallelism"), shape))
            continue
        if dspec.replicas and shape.nodes > 1:
            multi_node_replicas += dspec.replicas
        problems.extend(_capacity(doc, dep, shape, node_stats(cluster, candidates)))
    blocks = ray.size // spec.ports.ray_block_size
    if multi_node_replicas > blocks:
        problems.append(
            cluster_doc.problem(
                ("spec", "ports", "ray"),
                f"{multi_node_replicas} multi-node replicas need one ray port block each; the "
                f"range holds {blocks} of {spec.ports.ray_block_size}",
            )
        )
    problems.extend(more_checks(cluster_doc, cluster, deployments))
    return problems


def _capacity(
    doc: Document, dep: ModelDeployment, shape: ReplicaShape, candidates: NodeStats
) -> list[Problem]:
    """Replicas x GPUs must be coverable by the candidates' declared GPUs (or nodes, for CPU)."""
    replicas = dep.spec.replicas
    if replicas == 0:
        return []
    if shape.gpus_per_node == 0:
        return []  # CPU engines share nodes; they compete for cores, not GPUs
    slots = candidates.slots(shape.gpus_per_node)
    needed = replicas * shape.nodes
    if needed > slots:
        return [
            doc.problem(
                ("spec", "replicas"),
                f"{replicas} replica(s) x {shape.gpus} GPUs do not fit the matching nodes' "
                f"declared GPUs ({sum(candidates.counts)} in all, {slots} slot(s) of "
                f"{shape.gpus_per_node})",
            )
        ]
    return []
