"""Build the node's ObservedState from the ports. Read-only: it changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from reconciler.core.launch import mp_multi_node, replica_gcs_address
from reconciler.core.peer_choice import peers_to_ask
from reconciler.core.vocabulary import (
    MemberKey,
    ObservedState,
    PeerReplica,
    Placement,
    RayView,
    ReplicaKey,
)
from reconciler.desired.state import DesiredState
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
    answered: frozenset[str] = frozenset()
    if desired is not None and placement is not None:
        if peers is not None:
            # only the leaders whose answers this node's plan reads, from this tick's
            # placement: not every node of the Cluster (N nodes asking N would be N^2)
            ask = peers_to_ask(desired, placement, node, procs.values())
            if ask:
                answers = peers.replicas(ask)
                peer_view, answered = answers, answers.answered
        for p in placement.on_node(node):
            if ray is None or not p.multi_node or p.ray_block is None:
                continue
            if mp_multi_node(desired.deployments[p.key.deployment], p):
                continue  # vLLM's own multi-node mode: no Ray
            address = replica_gcs_address(desired.cluster, p)
            if p.leader == node:
                # Members are the nodes labelled with the hash of the head that runs.
                head = procs.get(MemberKey(p.key, "ray-head"))
                if head is None or not head.running:
                    continue
                view = ray.view(address, head.spec_hash)
            else:
                # Before joining, a follower reads the head's Ray/Python versions (notes
                # only; `ray start` itself refuses a Ray version mismatch).
                worker = procs.get(MemberKey(p.key, "ray-worker"))
                peer = peer_view.get(p.key)
                if (worker is not None and worker.running) or peer is None or not peer.head_up:
                    continue
                view = ray.view(address, peer.spec_hash)
            if view is not None:
                ray_views[p.key] = view
    return ObservedState(
        node=node,
        gpus=gpu_inv,
        processes=procs,
        foreign_pids=foreign,
        peers=peer_view,
        ray=ray_views,
        peers_answered=answered,
    )
