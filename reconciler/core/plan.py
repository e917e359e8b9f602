"""plan(): what this node should do now, and why. Pure and deterministic.

No I/O and no clock reads: the same (desired, observed, inventory, now, node) always
gives the same Plan. This module is the entry point and the order of the steps; each
decision lives in a module of its own:

- members.py       which member processes this node should run (engine, Ray head/worker)
- restarts.py      a crash -> failure -> backoff -> restart (where a crashed engine's
                   restart is decided, and the forgiveness rule)
- rollout.py       when an old-hash member may be replaced (RollingUpdate / Recreate)
- fate_sharing.py  multi-node groups: formation order and restart as one
- gpu_assignment.py which GPUs each member gets
- lifecycle.py     the legal state changes; a proposed state outside them is refused

Actions are ordered: reaps and stops before starts, so that a start only happens once
the GPUs and port it needs are free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.core import drain, fate_sharing, lifecycle, restarts, rollout, surge
from reconciler.core.gpu_assignment import assign_node_gpus, usable_gpus
from reconciler.core.launch import (
    NodeContext,
    drain_seconds,
    engine_launch,
    model_path_allowed,
    ray_launch,
)
from reconciler.core.members import PlanWork, Wanted, status, wanted_members, why_unwanted
from reconciler.core.placement import place
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Action,
    Desired,
    Inventory,
    LaunchSpec,
    MarkReady,
    MemberKey,
    ObservedState,
    Placement,
    Plan,
    ProcessObservation,
    Reap,
    RefusedTransition,
    ReplicaKey,
    ReplicaState,
    ReplicaStatus,
    Start,
    Stop,
)


def plan(
    desired: Desired | None,
    observed: ObservedState,
    inventory: Inventory,
    now: float,
    node: NodeContext,
    *,
    placement: Placement | None = None,
    previous: Mapping[ReplicaKey, ReplicaState] | None = None,
    draining: Mapping[MemberKey, float] | None = None,
) -> Plan:
    """`placement`: the tick's placement of `desired` (computed here when not given);
    `previous`: the replica states recorded last tick (None: first sight, nothing to
    check a state change against); `draining`: the last plan's `draining` (members whose
    drain is being announced, and since when)."""
    if desired is None:
        # Desired-unknown is not desired-empty: with no good revision yet, touch nothing.
        return Plan(
            actions=(),
            replicas={},
            placement=Placement({}, {}),
            notes=("no valid desired state yet: nothing is started or stopped",),
        )
    if placement is None:
        placement = place(desired)
    observed = fate_sharing.mp_peer_views(desired, placement, observed)
    wanted = wanted_members(desired, placement, node.name)
    # rollout.maxSurge: new engines started beside old ones, where there is room
    surges = surge.wanted_surges(wanted, observed, frozenset(usable_gpus(observed)[0]))
    wanted = {**wanted, **surges}
    work = PlanWork(addresses={n.name: n.address for n in desired.cluster.spec.nodes},
                    now=now, draining=draining or {})

    # 1. processes that exited: forget them, counting unexpected exits as failures
    restarts.reap_exited(work, wanted, observed, inventory)

    # 2. running processes that should not run, or not like this
    for member, proc in sorted(observed.processes.items()):
        if not proc.running:
            continue
        w = wanted.get(member)
        if w is None:
            # deleted, suspended, scaled in or moved: drained as it was launched to drain
            # (a deleted deployment's members still know: core/drain.py)
            dep = desired.deployments.get(member.replica.deployment)
            where = placement.replicas.get(member.replica)
            why = (f"{member.replica}: its own engine serves the new spec; surge no longer "
                   "needed") if member.role == "surge" else why_unwanted(
                       member, desired, placement, node.name)
            leader = where.leader if where is not None and where.multi_node else ""
            waiting = drain.retire(
                work, member, why, proc, drain_seconds(dep), observed, node.name, leader,
                leader_drains=drain.leader_drains(proc, where, desired))
            if (waiting is not None and member.role != "surge"
                    and member.replica not in work.statuses):
                work.statuses[member.replica] = drain.unwanted_status(
                    member, proc, f"{why}; {waiting}", node.name)
        elif proc.spec_hash != w.spec_hash and surge.holds_old(member, surges, observed):
            work.statuses[member.replica] = status(
                w, "Ready", "surge: the new engine starts beside this one", node.name, proc,
                old=True)
        elif proc.spec_hash != w.spec_hash:
            rollout.replace_old(work, w, proc, observed, placement, node.name)
        elif (moved := drain.group_moved(w, proc, observed, work.addresses, node.name)):
            drain.regroup(work, w, proc, moved, observed, node.name)
        else:
            restarts.stop_if_failing(work, w, proc, desired, now, node)

    # 2b. fate sharing: a multi-node replica lives and dies as one group
    fate_sharing.share_fate(work, wanted, observed, node.name)

    # 3. GPU assignment for what should run here; running members keep what they have
    usable, blocked = usable_gpus(observed)
    running_ok = frozenset(
        m
        for m, proc in observed.processes.items()
        if proc.running
        and m in wanted
        and m not in work.stopping
        and m not in work.still_draining
        and proc.spec_hash == wanted[m].spec_hash
    )
    assignment, gpu_missing = assign_node_gpus(
        {m: w.gpus_needed for m, w in wanted.items()}, running_ok, observed, inventory, usable
    )

    # 4. starts, per replica, honouring backoff, rollout, GPUs and Ray formation order
    # Ray members first: on a leader the head must be up before the engine (driver).
    for member, w in sorted(wanted.items(), key=lambda kv: (kv[0].replica, kv[0].role == "engine")):
        key = member.replica
        current = observed.processes.get(member)
        if member.role == "surge":
            _surge_start(work, w, current, observed, inventory, now, node, desired,
                         assignment.get(member), gpu_missing.get(member), blocked)
            continue
        if member in running_ok:
            assert current is not None
            _running_status(work, w, current, observed, node, inventory)
            continue
        if current is not None and current.running and member not in work.stopping:
            continue  # old hash held back by the rollout; status already set
        blocked_by = _start_blocker(
            w, work, observed, inventory, now, node, gpu_missing.get(member), blocked
        )
        if blocked_by is not None:
            state, reason = blocked_by
            if key not in work.statuses or work.statuses[key].state == "Ready":
                work.statuses[key] = status(w, state, reason, node.name, current)
            continue
        launch = _launch(node, desired, w, assignment[member])
        why = "not running"
        if key in work.failed_now or (current is not None and not current.running):
            why = "restarting after failure"
        elif member in work.stopping:
            why = "replacing with the new spec"
        work.actions.append(
            Start(launch, f"{key}: start {member.role} ({why}), hash {w.spec_hash}")
        )
        work.statuses.setdefault(key, status(w, "Starting", why, node.name, None, launch))

    # 5. replicas that are nowhere: say why, cluster-wide
    hashes: dict[str, str] = {}
    for key, reason in placement.unschedulable.items():
        if key.deployment not in hashes:
            dep = desired.deployments[key.deployment]
            hashes[key.deployment] = spec_hash(desired.cluster, dep)
        work.statuses[key] = ReplicaStatus(
            key, "Pending", reason, "single", (), hashes[key.deployment]
        )

    # 6. every state change through the lifecycle table: a refused one keeps the old state
    replicas, refused = _through_lifecycle(work.statuses, previous or {})
    return Plan(
        actions=tuple(sorted(work.actions, key=_action_rank)),
        replicas=dict(sorted(replicas.items(), key=lambda kv: (kv[0].deployment, kv[0].index))),
        placement=placement,
        notes=tuple(_drift_notes(desired, observed, node.name)),
        refused=refused,
        draining=dict(work.still_draining),
    )


def _through_lifecycle(
    statuses: dict[ReplicaKey, ReplicaStatus], previous: Mapping[ReplicaKey, ReplicaState]
) -> tuple[dict[ReplicaKey, ReplicaStatus], tuple[RefusedTransition, ...]]:
    # replicas placed nowhere were never this node's: their state is not checked
    moved = lifecycle.advance(
        previous,
        {k: s.state for k, s in statuses.items()},
        unchecked=frozenset(k for k, s in statuses.items() if not s.nodes),
    )
    out = dict(statuses)
    for r in moved.refused:
        s = statuses[r.replica]
        out[r.replica] = replace(
            s, state=r.old, reason=f"{s.reason} ({r.old} -> {r.new} refused by the lifecycle table)"
        )
    return out, moved.refused


def _action_rank(action: Action) -> int:
    if isinstance(action, Reap):
        return 0
    if isinstance(action, Stop):
        return 1
    if isinstance(action, MarkReady):
        return 2
    return 3


def _start_blocker(
    w: Wanted,
    work: PlanWork,
    observed: ObservedState,
    inventory: Inventory,
    now: float,
    node: NodeContext,
    gpu_missing: str | None,
    blocked: dict[int, str],
) -> tuple[ReplicaState, str] | None:
    """Why this member must not start now (the state to report and the reason), or None."""
    key = w.member.replica
    model_path = w.dep.spec.model.path
    if not model_path_allowed(node, model_path):
        return "Pending", (
            f"model path {model_path} is outside this node's allowed model roots "
            f"({', '.join(node.allowed_model_roots)})"
        )
    backing_off = restarts.restart_wait(
        w, key in work.failed_now, inventory.restarts.get(key), now, node.backoff
    )
    if backing_off is not None:
        return backing_off
    if gpu_missing is not None:
        detail = gpu_missing
        if blocked:
            detail += "; " + "; ".join(blocked[i] for i in sorted(blocked))
        if not observed.gpus.available:
            detail += f"; GPUs not observable: {observed.gpus.error or 'NVML unavailable'}"
        return "Pending", f"waiting for GPUs: {detail}"
    waiting = fate_sharing.formation_wait(w, work, observed, node.name) or rollout.recreate_wait(
        w, work, observed
    )
    if waiting is not None:
        return "Pending", waiting
    return None


def _surge_start(work: PlanWork, w: Wanted, current: ProcessObservation | None,
                 observed: ObservedState, inventory: Inventory, now: float,
                 node: NodeContext, desired: Desired, gpus: tuple[int, ...] | None,
                 gpu_missing: str | None, blocked: dict[int, str]) -> None:
    """Start a wanted surge engine; it never sets its replica's status (the replica's own
    engine does, and the gateways read a not-Ready replica's surge member directly)."""
    if current is not None and current.running:
        return
    if _start_blocker(w, work, observed, inventory, now, node, gpu_missing, blocked) is not None:
        return
    assert gpus is not None
    launch = _launch(node, desired, w, gpus)
    work.actions.append(Start(launch, f"{w.member.replica}: start a surge engine beside the "
                                      f"old one on port {w.placement.port}, hash {w.spec_hash}"))


def _launch(
    node: NodeContext, desired: Desired, w: Wanted, gpus: tuple[int, ...]
) -> LaunchSpec:
    if w.member.role in ("engine", "surge"):
        return engine_launch(node, desired.cluster, w.dep, w.placement, w.spec_hash, gpus,
                             role=w.member.role)
    return ray_launch(node, desired.cluster, w.dep, w.placement, w.spec_hash, gpus)


def _running_status(
    work: PlanWork,
    w: Wanted,
    proc: ProcessObservation,
    observed: ObservedState,
    node: NodeContext,
    inventory: Inventory,
) -> None:
    key = w.member.replica
    if w.member.role == "engine" and w.mp_multi and w.placement.leader != node.name:
        # a headless follower rank: the leader's engine decides the replica's state
        _led_status(work, w, proc, observed, node.name, inventory, "engine rank running",
                    "engine rank running")
        return
    if w.member.role == "engine":
        if proc.health == "ready":
            state: ReplicaState = "Ready"
            reason = "serving"
            restarts.mark_ready(work, key, inventory)
        elif proc.health == "unhealthy":
            state, reason = "Starting", f"health probe failing: {proc.detail}"
        else:
            state, reason = "Starting", "loading (health probe not answering yet)"
        work.statuses[key] = status(w, state, reason, node.name, proc)
        return
    # a Ray member: the engine (on the leader) decides the replica's state; a follower
    # reports what the leader says
    if w.member.role == "ray-worker" and key not in work.statuses:
        _led_status(work, w, proc, observed, node.name, None, "Ray worker running",
                    "Ray worker joined")


def _led_status(
    work: PlanWork,
    w: Wanted,
    proc: ProcessObservation,
    observed: ObservedState,
    node: str,
    inventory: Inventory | None,
    running: str,
    joined: str,
) -> None:
    """A follower's member runs: the replica is what its leader says. With `inventory`
    (an mp engine rank) readiness also starts this node's forgiveness clock; a Ray worker
    never recorded it."""
    key = w.member.replica
    peer = observed.peers.get(key)
    if peer is not None and peer.ready and peer.spec_hash == w.spec_hash:
        if inventory is not None:
            restarts.mark_ready(work, key, inventory)
        work.statuses[key] = status(w, "Ready", "serving (led by the leader)", node, proc)
    elif peer is None:
        reason = f"{running}; leader {w.placement.leader} unreachable"
        work.statuses[key] = status(w, "Starting", reason, node, proc)
    else:
        reason = f"{joined}; waiting for the leader's engine"
        work.statuses[key] = status(w, "Starting", reason, node, proc)


def _drift_notes(desired: Desired, observed: ObservedState, node: str) -> list[str]:
    notes: list[str] = []
    decl = next((n for n in desired.cluster.spec.nodes if n.name == node), None)
    if decl is None:
        notes.append(f"node {node!r} is not in the Cluster document: it runs nothing")
        return notes
    gpus = observed.gpus
    if not gpus.available:
        if decl.gpus.count:
            notes.append(f"GPUs not observable: {gpus.error or 'NVML unavailable'}")
        return notes
    if len(gpus.gpus) != decl.gpus.count:
        notes.append(f"GPU count drift: declared {decl.gpus.count}, found {len(gpus.gpus)}")
    if decl.gpus.model:
        odd = sorted({g.name for g in gpus.gpus if g.name != decl.gpus.model})
        if odd:
            notes.append(f"GPU model drift: declared {decl.gpus.model!r}, found {odd}")
    for g in gpus.gpus:
        if abs(g.memory_total_mib / 1024 - decl.gpus.memory_gib) > max(
            1.0, 0.03 * decl.gpus.memory_gib
        ):
            notes.append(
                f"GPU {g.index} memory drift: declared {decl.gpus.memory_gib:g} GiB, found "
                f"{g.memory_total_mib / 1024:.1f} GiB"
            )
    if gpus.simulated:
        notes.append("GPUs are SIMULATED from the node config (no NVML)")
    return notes
