"""Which member processes this node should run, and the plan's working state.

A replica placed on this node needs one engine, or (Ray multi-node) a Ray head plus the
engine on the leader and a Ray worker on each follower. `PlanWork` is what the steps of
plan() (restarts, rollout, fate sharing, starts) write into while one plan is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core.launch import mp_multi_node
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Action,
    Desired,
    Drain,
    LaunchSpec,
    MemberKey,
    Placement,
    ProcessObservation,
    ReplicaKey,
    ReplicaPlacement,
    ReplicaState,
    ReplicaStatus,
    Stop,
)
from schemas.v1alpha1 import ModelDeployment

# How long a replica shows Draining before its engine gets SIGTERM: gateways read every
# daemon's /status each second, so three polls take it out of every table (KServe's
# recipe sleeps 15 s for a router that polls less often).
DRAIN_ANNOUNCE_S = 3.0


@dataclass
class Wanted:
    """One member this node should run for a replica placed on it."""

    member: MemberKey
    placement: ReplicaPlacement
    dep: ModelDeployment
    spec_hash: str
    gpus_needed: int

    @property
    def mp_multi(self) -> bool:
        """Run by vLLM's own multi-node mode (one engine rank per node, no Ray)."""
        return mp_multi_node(self.dep, self.placement)


@dataclass
class PlanWork:
    """The plan being made: actions, replica statuses and what this tick stops or fails."""

    actions: list[Action] = field(default_factory=list)
    statuses: dict[ReplicaKey, ReplicaStatus] = field(default_factory=dict)
    stopping: set[MemberKey] = field(default_factory=set)
    failed_now: set[ReplicaKey] = field(default_factory=set)
    addresses: dict[str, str] = field(default_factory=dict)  # node name -> address
    now: float = 0.0
    draining: Mapping[MemberKey, float] = field(default_factory=dict)  # last tick's
    still_draining: dict[MemberKey, float] = field(default_factory=dict)  # this tick's

    def stop(self, member: MemberKey, reason: str, failure: bool = False) -> None:
        """Stop a member; a failure counts towards its replica's restart backoff."""
        self.actions.append(Stop(member, reason, failure=failure))
        self.stopping.add(member)
        if failure:
            self.failed_now.add(member.replica)

    def retire(self, member: MemberKey, reason: str, proc: ProcessObservation,
               drain_s: float | None) -> bool:
        """Stop a serving engine on purpose (spec change, scale-in, delete, suspend,
        move). With a drain timeout it is announced first (its replica shows Draining, so
        gateways stop sending it requests) and gets SIGTERM DRAIN_ANNOUNCE_S later, with
        the drain timeout added to its stop grace. True when the stop is planned now,
        False while the drain is being announced. core/drain.py decides which members
        come here and what the Ray head and followers of a multi-node replica do."""
        if drain_s is None or member.role not in ("engine", "surge") or proc.health != "ready":
            self.stop(member, reason)
            return True
        since = self.draining.get(member)
        if since is None:
            self.actions.append(Drain(member, f"{reason}; draining: out of the gateways "
                                              f"first, then up to {drain_s:g} s for requests "
                                              "in flight"))
            self.still_draining[member] = self.now
            return False
        if self.now - since < DRAIN_ANNOUNCE_S:
            self.still_draining[member] = since
            return False
        self.actions.append(Stop(member, f"{reason}; drained", drain_s=float(drain_s)))
        self.stopping.add(member)
        return True

    def live(self, member: MemberKey, proc: ProcessObservation | None) -> bool:
        """Running and not being stopped by this plan."""
        return bool(proc and proc.running and member not in self.stopping)


def wanted_members(desired: Desired, placement: Placement, node: str) -> dict[MemberKey, Wanted]:
    out: dict[MemberKey, Wanted] = {}
    for p in placement.on_node(node):
        dep = desired.deployments[p.key.deployment]
        h = spec_hash(desired.cluster, dep)
        if not p.multi_node or mp_multi_node(dep, p):
            # single-node, or vLLM's own multi-node mode: one engine (rank) per node
            m = MemberKey(p.key, "engine")
            out[m] = Wanted(m, p, dep, h, p.gpus_per_node)
        elif p.leader == node:
            head = MemberKey(p.key, "ray-head")
            out[head] = Wanted(head, p, dep, h, p.gpus_per_node)
            drv = MemberKey(p.key, "engine")
            out[drv] = Wanted(drv, p, dep, h, 0)
        else:
            w = MemberKey(p.key, "ray-worker")
            out[w] = Wanted(w, p, dep, h, p.gpus_per_node)
    return out


def why_unwanted(member: MemberKey, desired: Desired, placement: Placement, node: str) -> str:
    name = member.replica.deployment
    dep = desired.deployments.get(name)
    if dep is None:
        return f"{member.replica}: deployment {name!r} no longer in the desired state"
    if dep.spec.suspend:
        return f"{member.replica}: deployment suspended"
    if member.replica.index >= dep.spec.replicas:
        return f"{member.replica}: scaled down to {dep.spec.replicas} replica(s)"
    p = placement.replicas.get(member.replica)
    if p is None:
        reason = placement.unschedulable.get(member.replica, "not placed")
        return f"{member.replica}: {reason}"
    if node not in p.nodes:
        return f"{member.replica}: placed on {', '.join(p.nodes)} now"
    return f"{member.replica}: role changed on this node"


def role_of(p: ReplicaPlacement, node: str) -> str:
    if not p.multi_node:
        return "single"
    return "leader" if p.leader == node else "follower"


def status(
    w: Wanted,
    state: ReplicaState,
    reason: str,
    node: str,
    proc: ProcessObservation | None,
    launch: LaunchSpec | None = None,
    old: bool = False,
) -> ReplicaStatus:
    """The status of w's replica; `old`: reported at the hash the running process has."""
    gpus = launch.gpus if launch else (proc.gpus if proc else ())
    return ReplicaStatus(
        replica=w.member.replica,
        state=state,
        reason=reason,
        role=role_of(w.placement, node),
        nodes=w.placement.nodes,
        spec_hash=w.spec_hash if not old or proc is None else proc.spec_hash,
        gpus=gpus,
        port=w.placement.port,
    )
