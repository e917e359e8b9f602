"""Build the node's ObservedState from the ports. Read-only: it changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from reconciler.launch import ray_ports
from reconciler.loader import DesiredState
from reconciler.model import (
    MemberKey,
    ObservedState,
    PeerReplica,
    Placement,
    RayView,
    ReplicaKey,
)
from reconciler.ports.gpus import GpuPort
from reconciler.ports.peers import PeerPort
from reconciler.ports.processes import ProcessPort
from reconciler.ports.ray_nodes import RayPort

log = logging.getLogger(__name__)


def observe(
    node: str,
    gpus: GpuPort,
    processes: ProcessPort,
    ray: RayPort | None,
    peers: PeerPort | None,
    desired: DesiredState | None,
    placement: Placement | None,
) -> ObservedState:
    gpu_inv = gpus.observe()
    procs = {p.member: p for p in processes.list()}
    ours = processes.owned_pids()
    foreign = frozenset(pid for g in gpu_inv.gpus for pid in g.process_pids if pid not in ours)
    ray_views: dict[ReplicaKey, RayView] = {}
    peer_view: Mapping[ReplicaKey, PeerReplica] = {}
    if desired is not None and placement is not None:
        for p in placement.on_node(node):
            if not p.multi_node or p.leader != node or p.ray_block is None:
                continue
            head = procs.get(MemberKey(p.key, "ray-head"))
            if ray is None or head is None or not head.running:
                continue
            leader = next(n for n in desired.cluster.spec.nodes if n.name == node)
            address = f"{leader.address}:{ray_ports(desired.cluster, p.ray_block).gcs}"
            view = ray.view(address)
            if view is not None:
                ray_views[p.key] = view
        if peers is not None and len(desired.cluster.spec.nodes) > 1:
            peer_view = peers.replicas()
    return ObservedState(
        node=node,
        gpus=gpu_inv,
        processes=procs,
        foreign_pids=foreign,
        peers=peer_view,
        ray=ray_views,
    )
