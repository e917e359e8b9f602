"""Rolling out a new spec hash: when an old-hash member may be replaced.

RollingUpdate replaces replicas in index order, keeping at most `maxUnavailable` of a
deployment's replicas not ready at the new hash; Recreate stops every old member first
and starts new ones only once they are all gone.
"""

from __future__ import annotations

from reconciler.core import drain
from reconciler.core.launch import drain_seconds
from reconciler.core.members import PlanWork, Wanted, status
from reconciler.core.vocabulary import (
    MemberKey,
    ObservedState,
    Placement,
    ProcessObservation,
    ReplicaKey,
)


def replace_old(
    work: PlanWork,
    w: Wanted,
    proc: ProcessObservation,
    observed: ObservedState,
    placement: Placement,
    node: str,
) -> None:
    """A member runs at another hash than wanted: stop it if the rollout allows, else
    report the replica Ready at its old hash, held back."""
    ok, why = _allows_replace(proc, w, observed, placement, node)
    if ok:
        reason = f"{w.member.replica}: spec changed (hash {proc.spec_hash} -> {w.spec_hash}); {why}"
        waiting = drain.retire(work, w.member, reason, proc, drain_seconds(w.dep), observed,
                               node, w.placement.leader if w.placement.multi_node else "")
        if waiting is not None and (w.member.replica not in work.statuses
                                    or w.member.role == "engine"):
            work.statuses[w.member.replica] = status(
                w, "Draining", f"{waiting}, before it is replaced", node, proc, old=True)
    else:
        work.statuses[w.member.replica] = status(w, "Ready", why, node, proc, old=True)


def recreate_wait(w: Wanted, work: PlanWork, observed: ObservedState) -> str | None:
    """Recreate: why a new-hash member must not start yet (old members still running)."""
    if w.dep.spec.rollout.strategy != "Recreate":
        return None
    key = w.member.replica
    old = [
        m
        for m, proc in observed.processes.items()
        if m.replica.deployment == key.deployment
        and proc.running
        and proc.spec_hash != w.spec_hash
        and m not in work.stopping
    ]
    if old:
        return f"Recreate: waiting for {len(old)} old member(s) to stop"
    return None


def _ready_at(
    key: ReplicaKey, h: str, observed: ObservedState, node: str, placement: Placement
) -> bool:
    """Is this replica serving at hash h, as far as this node can know?"""
    p = placement.replicas.get(key)
    if p is not None and p.leader == node:
        proc = observed.processes.get(MemberKey(key, "engine"))
        return bool(proc and proc.running and proc.spec_hash == h and proc.health == "ready")
    peer = observed.peers.get(key)
    return bool(peer and peer.spec_hash == h and peer.ready)


def _allows_replace(
    proc: ProcessObservation,
    w: Wanted,
    observed: ObservedState,
    placement: Placement,
    node: str,
) -> tuple[bool, str]:
    """May the old-hash member of this replica be stopped now?"""
    if proc.health != "ready":
        return True, "not serving, nothing to protect"
    rollout = w.dep.spec.rollout
    if rollout.strategy == "Recreate":
        return True, "Recreate"
    # RollingUpdate: replace in index order, with at most maxUnavailable replicas of the
    # deployment not ready at the new hash ahead of this one.
    behind = 0
    for index in range(w.member.replica.index):
        key = ReplicaKey(w.member.replica.deployment, index)
        if key not in placement.replicas:
            continue
        if not _ready_at(key, w.spec_hash, observed, node, placement):
            behind += 1
    if behind >= rollout.max_unavailable:
        return False, (
            f"rolling update: waiting for {behind} earlier replica(s) to be ready at "
            f"{w.spec_hash} (maxUnavailable {rollout.max_unavailable})"
        )
    return True, "rolling update"
