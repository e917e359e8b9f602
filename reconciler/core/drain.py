"""Draining before a stop on purpose: which member may go now, and which must wait. Pure.

Issue 14: before a replica is stopped or replaced (rolling update, scale-in, delete,
suspend, move) it leaves every gateway's table, the requests in flight finish within the
deployment's `rollout.drainTimeoutSeconds`, and only then does its engine get SIGTERM.
Every member knows its drain from how it was launched (`ProcessObservation.drain_s`,
written into its state file and env markers), so a deployment deleted from git still
drains; where a member predates that record, the deployment's setting is used.

- A serving engine (single-node, the Ray driver, an mp replica's rank 0) is announced
  first (its replica shows Draining) and gets SIGTERM DRAIN_ANNOUNCE_S later, with its
  drain on top of the stop grace (`PlanWork.retire`).
- The leader's Ray head stays while that engine runs: the engine's Ray workers finish
  the requests in flight. It stops in the tick the engine's stop is planned (apply stops
  in plan order, synchronously) or once the engine is gone.
- A follower (Ray worker, headless mp rank) stays while its leader's engine runs at the
  follower's own hash, as its leader's /status says (ports/peers), also after the
  replica left the placement (it asks the leader it was launched under). It goes once
  the leader answers without that engine. Once the leader shows the replica Draining, or
  stops answering, it waits no longer than the announce + the drain + DRAIN_MARGIN_S: a
  dead leader never pins a follower for ever. A leader that answers and still serves
  without Draining has not seen the change yet (nodes fetch a revision up to a poll
  interval apart, and a leader whose source fails keeps its last good revision): its
  replica still serves on this member, which stays, and the bound starts with its drain.
- A follower moved off a Ray replica whose leader stays (its node drained, say): the
  leader sees a Ray member on a node no longer placed and drains its engine
  (`group_moved`, `regroup`), keeping its head; the old follower waits for that like
  any follower, bounded from its own decision (`leader_drains` False: the leader's
  revision gives it no other reason to drain), and the engine starts again once the old
  member has left the Ray cluster (fate_sharing.formation_wait). An mp leader cannot
  see its followers: there the old rank leaves at the bound and vLLM's broken group
  restarts the replica.

Members without a drain (None) stop at once, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.launch import drain_seconds
from reconciler.core.members import DRAIN_ANNOUNCE_S, PlanWork, Wanted, status
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Desired,
    MemberKey,
    ObservedState,
    ProcessObservation,
    RayView,
    ReplicaPlacement,
    ReplicaStatus,
)

# Beyond the announce and the drain, how long a follower (or the leader's Ray head) still
# waits for the leader's engine: nodes load a revision a tick or two apart (a webhook wakes
# them all), and the leader stops its head and publishes its status after the drain.
DRAIN_MARGIN_S = 15.0


def hold_bound(drain_s: float) -> float:
    """How long a member may wait for its leader's engine to drain, at most."""
    return DRAIN_ANNOUNCE_S + drain_s + DRAIN_MARGIN_S


def retire(work: PlanWork, member: MemberKey, reason: str, proc: ProcessObservation,
           spec_drain_s: float | None, observed: ObservedState, node: str,
           placed_leader: str = "", *, leader_drains: bool = True) -> str | None:
    """Stop `member` on purpose, draining first where it drains. None when the stop is
    planned now; else why it is still running (for its replica's Draining status).
    `spec_drain_s`: the deployment's drain timeout where it still exists;
    `placed_leader`: the replica's leader by this tick's placement, for a member whose
    record predates `ProcessObservation.leader`; `leader_drains`: False for a follower
    whose leader keeps the replica as it is by this revision (only this node left it),
    so a leader that serves on is no reason to wait beyond the bound."""
    drain_s = proc.drain_s if proc.drain_s is not None else spec_drain_s
    if drain_s is None:
        work.stop(member, reason)
        return None
    leader = proc.leader or placed_leader
    if member.role in ("engine", "surge") and leader in ("", node):
        if work.retire(member, reason, proc, drain_s):
            return None
        return "draining: out of the gateways, then requests in flight finish"
    if member.role == "ray-head":
        engine = MemberKey(member.replica, "engine")
        if not work.live(engine, observed.processes.get(engine)):
            work.stop(member, f"{reason}; the engine it served has stopped")
            return None
        return _hold(work, member, reason, drain_s,
                     "Ray head kept while the engine drains on it")
    # a follower: a Ray worker, or a headless mp rank
    if not leader:
        work.stop(member, reason)
        return None
    peer = observed.peers.get(member.replica)
    if (peer is not None and peer.engine_hash == proc.spec_hash and not peer.draining
            and leader_drains):
        # the leader serves on: it has not seen this change yet (nodes fetch a revision
        # up to a poll interval apart). Its engine would fail its requests in flight
        # without this member; the bound counts from when its drain begins.
        work.still_draining[member] = work.now
        return f"kept while leader {leader}'s engine still serves (it has not begun to drain)"
    if peer is not None and peer.engine_hash == proc.spec_hash:
        why = f"kept while leader {leader}'s engine {'drains' if peer.draining else 'runs'}"
    elif peer is None and leader not in observed.peers_answered:
        why = f"kept until leader {leader}'s engine has drained (leader not answering)"
    else:
        work.stop(member, f"{reason}; leader {leader}'s engine has stopped")
        return None
    return _hold(work, member, reason, drain_s, why)


def _hold(work: PlanWork, member: MemberKey, reason: str, drain_s: float,
          why: str) -> str | None:
    since = work.draining.get(member, work.now)
    bound = hold_bound(drain_s)
    if work.now - since >= bound:
        work.stop(member, f"{reason}; {why} no longer: {bound:g} s passed")
        return None
    work.still_draining[member] = since
    return why


def leader_drains(proc: ProcessObservation, where: ReplicaPlacement | None,
                  desired: Desired) -> bool:
    """Will this revision make the leader of `proc`'s replica retire its engine? Yes when
    the replica is placed nowhere, its leader moved, or its spec hash changed; no when only
    this node left it (a follower moved off, e.g. its node drained): the leader then
    re-forms the group (`group_moved`, Ray) or never learns of it (mp)."""
    if where is None or where.leader != (proc.leader or where.leader):
        return True
    dep = desired.deployments.get(proc.member.replica.deployment)
    return dep is None or spec_hash(desired.cluster, dep) != proc.spec_hash


def placed_ips(p: ReplicaPlacement, addresses: Mapping[str, str]) -> set[str]:
    """The addresses of the nodes the replica is placed on, as Ray names its members."""
    return {addresses.get(n, n) for n in p.nodes}


def unplaced_members(p: ReplicaPlacement, view: RayView | None,
                     addresses: Mapping[str, str]) -> tuple[str, ...]:
    """IPs of alive Ray members of the replica on nodes no longer placed."""
    if view is None:
        return ()
    placed = placed_ips(p, addresses)
    return tuple(ip for ip in view.alive_nodes if ip not in placed)


def group_moved(w: Wanted, proc: ProcessObservation, observed: ObservedState,
                addresses: Mapping[str, str], node: str) -> str:
    """A Ray multi-node leader's running engine whose group still has members on nodes
    no longer placed (a follower moved off, e.g. its node drained): those nodes' IPs, or
    "" when the group matches its placement. Only with a drain set: without one the old
    follower leaves at once and its rank's death fails the engine, as before."""
    p = w.placement
    drains = proc.drain_s is not None or drain_seconds(w.dep) is not None
    if (not drains or not p.multi_node or w.mp_multi or p.leader != node
            or w.member.role != "engine"):
        return ""
    return ", ".join(unplaced_members(p, observed.ray.get(p.key), addresses))


def regroup(work: PlanWork, w: Wanted, proc: ProcessObservation, moved: str,
            observed: ObservedState, node: str) -> None:
    """Drain the leader's engine so the group re-forms on its placement: the Ray head
    stays (the new follower has joined it at the same hash), the old follower leaves once
    the engine has stopped, and the engine starts again once no member is left on a node
    no longer placed (fate_sharing.formation_wait)."""
    reason = (f"{w.member.replica}: Ray members on nodes no longer placed ({moved}): the "
              "group re-forms")
    waiting = retire(work, w.member, reason, proc, drain_seconds(w.dep), observed, node,
                     w.placement.leader)
    if waiting is not None and (w.member.role == "engine"
                                or w.member.replica not in work.statuses):
        work.statuses[w.member.replica] = status(w, "Draining", f"{reason}; {waiting}", node,
                                                 proc)


def unwanted_status(member: MemberKey, proc: ProcessObservation, why: str,
                    node: str) -> ReplicaStatus:
    """Draining, for a replica this node still runs but no longer wants (deleted, scaled
    in, suspended, moved) while its members drain: gateways route Ready replicas only,
    and a follower reads its leader's members here."""
    leader = proc.leader or node
    role = "single" if not proc.leader else "leader" if leader == node else "follower"
    serving = member.role in ("engine", "surge") and role != "follower"
    return ReplicaStatus(
        replica=member.replica,
        state="Draining",
        reason=why,
        role=role,
        nodes=(leader,) if leader == node else (leader, node),
        spec_hash=proc.spec_hash,
        gpus=proc.gpus,
        port=proc.port if serving else None,
    )
