"""Multi-node replicas live and die as one group, and form in order.

Fate sharing (`share_fate`): when a member of a multi-node replica is lost (a Ray node
marked dead, the engine failed, the leader's head or engine gone or at another hash),
this node stops its own members of that replica so the whole group starts over.
Formation (`formation_wait`): a member starts only once what it joins is there: the
Ray driver after its head and every Ray member, a Ray worker or an mp follower rank
after the leader's head or engine at the same spec hash.
Both executors are read the same way: `mp_peer_views` turns what a peer says about an
mp leader's engine into the replica's view that the rules below read.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.drain import placed_ips, unplaced_members
from reconciler.core.launch import mp_multi_node
from reconciler.core.members import PlanWork, Wanted
from reconciler.core.vocabulary import (
    Desired,
    MemberKey,
    ObservedState,
    PeerReplica,
    Placement,
)


def mp_peer_views(desired: Desired, placement: Placement, observed: ObservedState) -> ObservedState:
    """For mp multi-node replicas (no Ray head), what a peer says about its leader's
    engine becomes the replica's view: spec_hash and head_up from the engine that runs,
    ready from its health. Every later rule then reads peers the same way for both
    executors."""
    views = dict(observed.peers)
    changed = False
    for key, peer in observed.peers.items():
        p = placement.replicas.get(key)
        if p is None or not mp_multi_node(desired.deployments[key.deployment], p):
            continue
        views[key] = PeerReplica(
            spec_hash=peer.engine_hash,
            ready=peer.engine_ready,
            head_up=peer.engine_hash != "",
            engine_hash=peer.engine_hash,
            engine_ready=peer.engine_ready,
            draining=peer.draining,
        )
        changed = True
    return replace(observed, peers=views) if changed else observed


def share_fate(
    work: PlanWork, wanted: dict[MemberKey, Wanted], observed: ObservedState, node: str
) -> None:
    """Stop this node's members of every multi-node replica whose group is broken."""

    def live(member: MemberKey) -> bool:
        return work.live(member, observed.processes.get(member))

    for member, w in sorted(wanted.items()):
        p = w.placement
        if not p.multi_node:
            continue
        key = member.replica
        if w.mp_multi:
            if live(member) and member not in work.still_draining:
                _mp_follower_fate(work, w, observed, node)
            continue
        if member.role == "ray-head" and live(member):
            engine = MemberKey(key, "engine")
            view = observed.ray.get(key)
            # a member lost on a node no longer placed moved off (drain.regroup drained the
            # engine before it left); Ray keeps it DEAD in the head's table for good
            placed = placed_ips(p, work.addresses)
            lost = tuple(ip for ip in view.lost if ip in placed) if view is not None else ()
            if view is not None and lost:
                # a member that had joined this head died (or was cut off long enough for
                # the head to declare it dead): the group is broken, start it over
                reason = (
                    f"{key}: fate sharing: Ray member lost ("
                    f"{_nodes_at(lost, work.addresses)} marked dead by the head); "
                    "restarting the whole replica"
                )
                # one failure per teardown: the engine's stop counts it when there is one
                counted = live(engine) or key in work.failed_now
                if live(engine):
                    work.stop(engine, reason, True)
                work.stop(member, reason, not counted)
            elif key in work.failed_now:
                # the engine failed (exited, startup timeout, unhealthy): the Ray
                # cluster goes with it; followers see the head go and leave too
                work.stop(member, f"{key}: fate sharing: the engine failed; restarting the "
                          "whole replica")
        elif member.role == "engine" and live(member):
            head = MemberKey(key, "ray-head")
            if not live(head):
                work.stop(member, f"{key}: fate sharing: this replica's Ray head is gone")
                continue
            view = observed.ray.get(key)
            if view is not None and len(view.alive_nodes) < len(p.nodes):
                missing = missing_nodes(p.nodes, view.alive_nodes, work.addresses)
                reason = (
                    f"{key}: fate sharing: Ray member lost ({len(view.alive_nodes)}/"
                    f"{len(p.nodes)} nodes alive, missing {missing}); restarting the whole "
                    "replica"
                )
                work.stop(member, reason, True)
                work.stop(head, reason)
        elif (member.role == "ray-worker" and live(member)
              and member not in work.still_draining):
            # (a worker kept while its leader's engine drains leaves by core/drain.py)
            peer = observed.peers.get(key)
            if peer is None:
                continue  # leader unreachable: cannot know; Ray itself notices a dead head
            if peer.spec_hash != w.spec_hash or not peer.head_up:
                what = "is down" if not peer.head_up else f"runs hash {peer.spec_hash}"
                work.stop(member, f"{key}: fate sharing: the leader's Ray head {what}")


def _mp_follower_fate(work: PlanWork, w: Wanted, observed: ObservedState, node: str) -> None:
    """vLLM mp multi-node: a follower rank leaves when the leader's engine is down or at
    another hash. The leader cannot see its followers through the peers (they lead
    nothing); a follower that dies breaks the torch.distributed group and vLLM fails on
    the leader, which is then reaped (or timed out) like any engine failure."""
    p = w.placement
    if p.leader == node:
        return
    key = w.member.replica
    peer = observed.peers.get(key)
    if peer is None:
        return  # leader unreachable: cannot know; vLLM notices a broken group
    # against the hash this rank runs: a rank held back by a rollout still belongs to the
    # leader's engine of its own hash
    mine = observed.processes[w.member].spec_hash
    if peer.spec_hash != mine or not peer.head_up:
        what = "is down" if not peer.head_up else f"runs hash {peer.spec_hash}"
        work.stop(w.member, f"{key}: fate sharing: the leader {p.leader}'s engine {what}")


def formation_wait(
    w: Wanted, work: PlanWork, observed: ObservedState, node: str
) -> str | None:
    """Why a member of a multi-node replica must not start yet; None when it may."""
    p = w.placement
    key = w.member.replica
    role = w.member.role
    if w.mp_multi and p.leader != node:
        # a follower rank joins the leader's rendezvous: only once the leader's engine
        # runs at this very hash
        peer = observed.peers.get(key)
        if peer is None or peer.spec_hash != w.spec_hash or not peer.head_up:
            seen = "unknown" if peer is None else (
                f"at hash {peer.spec_hash}" if peer.head_up else "engine not running"
            )
            return f"waiting for leader {p.leader}'s engine at hash {w.spec_hash} (leader {seen})"
    if p.multi_node and not w.mp_multi and role == "engine":
        head = MemberKey(key, "ray-head")
        head_proc = observed.processes.get(head)
        # a head this plan stops (the group re-forms at the same hash) is not up: its Ray
        # view is the old group's
        if (head_proc is None or not head_proc.running or head_proc.spec_hash != w.spec_hash
                or head in work.stopping):
            return "waiting for this replica's Ray head to start"
        view = observed.ray.get(key)
        expected = len(p.nodes)
        alive = len(view.alive_nodes) if view else 0
        gpus = view.gpus if view else 0.0
        need_gpus = p.gpus_per_node * expected
        gone_from = unplaced_members(p, view, work.addresses)
        if gone_from:
            # a member moved off (drain.regroup): no rank of the new engine may land there
            return ("waiting for Ray members on nodes no longer placed to leave: "
                    + ", ".join(gone_from))
        if alive < expected or gpus < need_gpus:
            reason = f"waiting for Ray members: {alive}/{expected} nodes, {gpus:g}/{need_gpus} GPUs"
            if view is not None:
                reason += f"; missing {missing_nodes(p.nodes, view.alive_nodes, work.addresses)}"
                if view.mismatched:
                    reason += f"; not counted, at another spec hash: {', '.join(view.mismatched)}"
            return reason
    if p.multi_node and role == "ray-worker":
        peer = observed.peers.get(key)
        if peer is None or peer.spec_hash != w.spec_hash or not peer.head_up:
            seen = "unknown" if peer is None else f"at hash {peer.spec_hash}"
            return f"waiting for leader {p.leader}'s Ray head at hash {w.spec_hash} (leader {seen})"
    return None


def _nodes_at(ips: tuple[str, ...], addresses: dict[str, str]) -> str:
    names = {a: n for n, a in addresses.items()}
    return ", ".join(f"{names[ip]} ({ip})" if ip in names else ip for ip in ips)


def missing_nodes(nodes: tuple[str, ...], alive: tuple[str, ...], addresses: dict[str, str]) -> str:
    """Placement nodes with no alive member at the replica's hash, as "name (ip)"."""
    gone = [n for n in nodes if addresses.get(n, n) not in alive]
    return ", ".join(f"{n} ({addresses[n]})" if n in addresses else n for n in gone) or "none"
