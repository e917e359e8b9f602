"""plan(): what this node should do now, and why. Pure and deterministic.

No I/O and no clock reads: the same (desired, observed, inventory, now, node) always
gives the same Plan. Actions are ordered: reaps and stops before starts, so that a
start only happens once the GPUs and port it needs are free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from reconciler.core.gpu_assignment import assign_gpus
from reconciler.core.launch import (
    NodeContext,
    engine_launch,
    model_path_allowed,
    mp_multi_node,
    ray_launch,
    startup_timeout,
)
from reconciler.core.placement import place
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Action,
    Desired,
    LaunchSpec,
    MarkReady,
    MemberKey,
    ObservedState,
    PeerReplica,
    Placement,
    Plan,
    ProcessObservation,
    Reap,
    ReplicaKey,
    ReplicaPlacement,
    ReplicaState,
    ReplicaStatus,
    Start,
    Stop,
)
from reconciler.core.vocabulary import Inventory as InventoryModel
from schemas.v1alpha1 import ModelDeployment


@dataclass
class _Wanted:
    """One member this node should run for a replica placed on it."""

    member: MemberKey
    placement: ReplicaPlacement
    dep: ModelDeployment
    spec_hash: str
    gpus_needed: int


@dataclass
class _Work:
    actions: list[Action] = field(default_factory=list)
    statuses: dict[ReplicaKey, ReplicaStatus] = field(default_factory=dict)
    stopping: set[MemberKey] = field(default_factory=set)
    failed_now: set[ReplicaKey] = field(default_factory=set)
    addresses: dict[str, str] = field(default_factory=dict)  # node name -> address


def _role_of(p: ReplicaPlacement, node: str) -> str:
    if not p.multi_node:
        return "single"
    return "leader" if p.leader == node else "follower"


def wanted_members(
    desired: Desired, placement: Placement, node: str
) -> dict[MemberKey, _Wanted]:
    out: dict[MemberKey, _Wanted] = {}
    for p in placement.on_node(node):
        dep = desired.deployments[p.key.deployment]
        h = spec_hash(desired.cluster, dep)
        if not p.multi_node or mp_multi_node(dep, p):
            # single-node, or vLLM's own multi-node mode: one engine (rank) per node
            m = MemberKey(p.key, "engine")
            out[m] = _Wanted(m, p, dep, h, p.gpus_per_node)
        elif p.leader == node:
            head = MemberKey(p.key, "ray-head")
            out[head] = _Wanted(head, p, dep, h, p.gpus_per_node)
            drv = MemberKey(p.key, "engine")
            out[drv] = _Wanted(drv, p, dep, h, 0)
        else:
            w = MemberKey(p.key, "ray-worker")
            out[w] = _Wanted(w, p, dep, h, p.gpus_per_node)
    return out


def _why_unwanted(member: MemberKey, desired: Desired, placement: Placement, node: str) -> str:
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


def _usable_gpus(observed: ObservedState) -> tuple[list[int], dict[int, str]]:
    usable: list[int] = []
    blocked: dict[int, str] = {}
    if not observed.gpus.available:
        return usable, blocked
    for gpu in observed.gpus.gpus:
        foreign = [pid for pid in gpu.process_pids if pid in observed.foreign_pids]
        if not gpu.healthy:
            blocked[gpu.index] = f"GPU {gpu.index} unhealthy ({gpu.health_detail})"
        elif foreign:
            blocked[gpu.index] = (
                f"GPU {gpu.index} used by a process we don't own (pid {foreign[0]})"
            )
        else:
            usable.append(gpu.index)
    return usable, blocked


def _replica_ready_at(
    key: ReplicaKey,
    h: str,
    observed: ObservedState,
    node: str,
    placement: Placement,
) -> bool:
    """Is this replica serving at hash h, as far as this node can know?"""
    p = placement.replicas.get(key)
    if p is not None and p.leader == node:
        proc = observed.processes.get(MemberKey(key, "engine"))
        return bool(proc and proc.running and proc.spec_hash == h and proc.health == "ready")
    peer = observed.peers.get(key)
    return bool(peer and peer.spec_hash == h and peer.ready)


def _rollout_allows_replace(
    proc: ProcessObservation,
    w: _Wanted,
    desired: Desired,
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
        if not _replica_ready_at(key, w.spec_hash, observed, node, placement):
            behind += 1
    if behind >= rollout.max_unavailable:
        return False, (
            f"rolling update: waiting for {behind} earlier replica(s) to be ready at "
            f"{w.spec_hash} (maxUnavailable {rollout.max_unavailable})"
        )
    return True, "rolling update"


def plan(
    desired: Desired | None,
    observed: ObservedState,
    inventory: InventoryModel,
    now: float,
    node: NodeContext,
) -> Plan:
    if desired is None:
        # Desired-unknown is not desired-empty: with no good revision yet, touch nothing.
        return Plan(
            actions=(),
            replicas={},
            placement=Placement({}, {}),
            notes=("no valid desired state yet: nothing is started or stopped",),
        )
    placement = place(desired)
    observed = _mp_peer_views(desired, placement, observed)
    wanted = wanted_members(desired, placement, node.name)
    work = _Work(addresses={n.name: n.address for n in desired.cluster.spec.nodes})

    # 1. processes that exited: forget them, counting unexpected exits as failures
    for member, proc in sorted(observed.processes.items()):
        if proc.running:
            continue
        w = wanted.get(member)
        expected = w is not None and w.spec_hash == proc.spec_hash
        code = "unknown" if proc.exit_code is None else str(proc.exit_code)
        reason = f"{member}: exited (code {code})"
        if proc.detail:
            reason += f": {proc.detail}"
        work.actions.append(Reap(member, reason, failure=expected))
        if expected:
            work.failed_now.add(member.replica)

    # 1b. owned members with no process at all that are no longer wanted: the daemon died
    # after a confirmed stop and before the inventory write; prune the inventory entry
    for member in sorted(inventory.members):
        if member not in observed.processes and member not in wanted:
            work.actions.append(
                Reap(member, f"{member}: owned but has no process (stopped before a crash)",
                     failure=False)
            )

    # 2. running processes that should not run, or not like this
    for member, proc in sorted(observed.processes.items()):
        if not proc.running:
            continue
        w = wanted.get(member)
        if w is None:
            work.actions.append(Stop(member, _why_unwanted(member, desired, placement, node.name)))
            work.stopping.add(member)
            continue
        if proc.spec_hash != w.spec_hash:
            ok, why = _rollout_allows_replace(proc, w, desired, observed, placement, node.name)
            if ok:
                work.actions.append(
                    Stop(
                        member,
                        f"{member.replica}: spec changed (hash {proc.spec_hash} -> "
                        f"{w.spec_hash}); {why}",
                    )
                )
                work.stopping.add(member)
            else:
                work.statuses[member.replica] = _status(w, "Ready", why, node.name, proc, old=True)
            continue
        timeout = startup_timeout(desired.cluster, w.dep)
        if proc.health == "starting" and now - proc.started_at > timeout:
            work.actions.append(
                Stop(
                    member,
                    f"{member.replica}: not ready {timeout:.0f}s after start (startup timeout)",
                    failure=True,
                )
            )
            work.stopping.add(member)
            work.failed_now.add(member.replica)
        elif (
            proc.health == "unhealthy"
            and proc.unhealthy_since is not None
            and now - proc.unhealthy_since > node.unhealthy_grace_s
        ):
            work.actions.append(
                Stop(
                    member,
                    f"{member.replica}: unhealthy for {now - proc.unhealthy_since:.0f}s "
                    f"({proc.detail or 'health probe failing'})",
                    failure=True,
                )
            )
            work.stopping.add(member)
            work.failed_now.add(member.replica)

    # 2b. fate sharing: a multi-node replica lives and dies as one group
    _fate_sharing(work, wanted, observed, node.name)

    # 3. GPU assignment for what should run here
    usable, blocked = _usable_gpus(observed)
    # GPUs of members on their way out stay reserved, except for the same member's
    # successor: apply stops the old process before starting the new one (and skips the
    # start if the stop fails), so a replaced engine lands on the GPUs it freed.
    reserved = frozenset(
        i
        for m, proc in observed.processes.items()
        if proc.running and m not in wanted
        for i in proc.gpus
    )
    previous = {m: o.gpus for m, o in inventory.members.items()}
    for m, proc in observed.processes.items():
        previous.setdefault(m, proc.gpus)
    needs = {m: w.gpus_needed for m, w in wanted.items()}
    running_ok = {
        m
        for m, proc in observed.processes.items()
        if proc.running
        and m in wanted
        and m not in work.stopping
        and proc.spec_hash == wanted[m].spec_hash
    }
    # running members keep exactly what they have
    fixed = {m: observed.processes[m].gpus for m in running_ok}
    taken = {i for g in fixed.values() for i in g}
    assignment, gpu_missing = assign_gpus(
        {m: n for m, n in needs.items() if m not in fixed},
        [i for i in usable if i not in taken],
        previous,
        reserved,
    )
    assignment.update(fixed)

    # 4. starts, per replica, honouring backoff, rollout, GPUs and Ray formation order
    # Ray members first: on a leader the head must be up before the engine (driver).
    for member, w in sorted(wanted.items(), key=lambda kv: (kv[0].replica, kv[0].role == "engine")):
        key = member.replica
        current = observed.processes.get(member)
        if member in running_ok:
            assert current is not None
            _running_status(work, w, current, observed, node, inventory)
            continue
        if current is not None and current.running and member not in work.stopping:
            continue  # old hash held back by the rollout; status already set
        blocked_by = _start_blockers(
            member, w, work, observed, inventory, now, node, wanted, gpu_missing, blocked
        )
        if blocked_by is not None:
            state, reason = blocked_by
            if key not in work.statuses or work.statuses[key].state == "Ready":
                work.statuses[key] = _status(w, state, reason, node.name, current)
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
        work.statuses.setdefault(key, _status(w, "Starting", why, node.name, None, launch))

    # 5. replicas that are nowhere: say why, cluster-wide
    hashes: dict[str, str] = {}
    for key, reason in placement.unschedulable.items():
        if key.deployment not in hashes:
            dep = desired.deployments[key.deployment]
            hashes[key.deployment] = spec_hash(desired.cluster, dep)
        work.statuses[key] = ReplicaStatus(
            key, "Pending", reason, "single", (), hashes[key.deployment]
        )

    notes = _drift_notes(desired, observed, node.name)
    ordered = sorted(work.actions, key=_action_rank)
    return Plan(
        actions=tuple(ordered),
        replicas=dict(
            sorted(work.statuses.items(), key=lambda kv: (kv[0].deployment, kv[0].index))
        ),
        placement=placement,
        notes=tuple(notes),
    )


def _fate_sharing(
    work: _Work, wanted: dict[MemberKey, _Wanted], observed: ObservedState, node: str
) -> None:
    def live(member: MemberKey) -> bool:
        proc = observed.processes.get(member)
        return bool(proc and proc.running and member not in work.stopping)

    def stop(member: MemberKey, reason: str, failure: bool) -> None:
        work.actions.append(Stop(member, reason, failure=failure))
        work.stopping.add(member)
        if failure:
            work.failed_now.add(member.replica)

    for member, w in sorted(wanted.items()):
        p = w.placement
        if not p.multi_node:
            continue
        key = member.replica
        if mp_multi_node(w.dep, p):
            if live(member):
                _mp_fate_sharing(member, w, observed, node, stop)
            continue
        if member.role == "ray-head" and live(member):
            engine = MemberKey(key, "engine")
            view = observed.ray.get(key)
            if view is not None and view.lost:
                # a member that had joined this head died (or was cut off long enough for
                # the head to declare it dead): the group is broken, start it over
                reason = (
                    f"{key}: fate sharing: Ray member lost ("
                    f"{_nodes_at(view.lost, work.addresses)} marked dead by the head); "
                    "restarting the whole replica"
                )
                # one failure per teardown: the engine's stop counts it when there is one
                counted = live(engine) or key in work.failed_now
                if live(engine):
                    stop(engine, reason, True)
                stop(member, reason, not counted)
            elif key in work.failed_now:
                # the engine failed (exited, startup timeout, unhealthy): the Ray
                # cluster goes with it; followers see the head go and leave too
                stop(member, f"{key}: fate sharing: the engine failed; restarting the whole "
                     "replica", False)
        elif member.role == "engine" and live(member):
            head = MemberKey(key, "ray-head")
            if not live(head):
                stop(member, f"{key}: fate sharing: this replica's Ray head is gone", False)
                continue
            view = observed.ray.get(key)
            if view is not None and len(view.alive_nodes) < len(p.nodes):
                missing = _missing_nodes(p.nodes, view.alive_nodes, work.addresses)
                reason = (
                    f"{key}: fate sharing: Ray member lost ({len(view.alive_nodes)}/"
                    f"{len(p.nodes)} nodes alive, missing {missing}); restarting the whole "
                    "replica"
                )
                stop(member, reason, True)
                stop(head, reason, False)
        elif member.role == "ray-worker" and live(member):
            peer = observed.peers.get(key)
            if peer is None:
                continue  # leader unreachable: cannot know; Ray itself notices a dead head
            if peer.spec_hash != w.spec_hash or not peer.head_up:
                what = "is down" if not peer.head_up else f"runs hash {peer.spec_hash}"
                stop(member, f"{key}: fate sharing: the leader's Ray head {what}", False)


def _mp_peer_views(
    desired: Desired, placement: Placement, observed: ObservedState
) -> ObservedState:
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
        )
        changed = True
    return replace(observed, peers=views) if changed else observed


def _mp_fate_sharing(
    member: MemberKey,
    w: _Wanted,
    observed: ObservedState,
    node: str,
    stop: Callable[[MemberKey, str, bool], None],
) -> None:
    """vLLM mp multi-node: a follower rank leaves when the leader's engine is down or at
    another hash. The leader cannot see its followers through the peers (they lead
    nothing); a follower that dies breaks the torch.distributed group and vLLM fails on
    the leader, which is then reaped (or timed out) like any engine failure."""
    p = w.placement
    if p.leader == node:
        return
    key = member.replica
    peer = observed.peers.get(key)
    if peer is None:
        return  # leader unreachable: cannot know; vLLM notices a broken group
    # against the hash this rank runs: a rank held back by a rollout still belongs to the
    # leader's engine of its own hash
    mine = observed.processes[member].spec_hash
    if peer.spec_hash != mine or not peer.head_up:
        what = "is down" if not peer.head_up else f"runs hash {peer.spec_hash}"
        stop(member, f"{key}: fate sharing: the leader {p.leader}'s engine {what}", False)


def _nodes_at(ips: tuple[str, ...], addresses: dict[str, str]) -> str:
    names = {a: n for n, a in addresses.items()}
    return ", ".join(f"{names[ip]} ({ip})" if ip in names else ip for ip in ips)


def _missing_nodes(
    nodes: tuple[str, ...], alive: tuple[str, ...], addresses: dict[str, str]
) -> str:
    """Placement nodes with no alive member at the replica's hash, as "name (ip)"."""
    gone = [n for n in nodes if addresses.get(n, n) not in alive]
    return ", ".join(f"{n} ({addresses[n]})" if n in addresses else n for n in gone) or "none"


def _action_rank(action: Action) -> int:
    if isinstance(action, Reap):
        return 0
    if isinstance(action, Stop):
        return 1
    if isinstance(action, MarkReady):
        return 2
    return 3


def _start_blockers(
    member: MemberKey,
    w: _Wanted,
    work: _Work,
    observed: ObservedState,
    inventory: InventoryModel,
    now: float,
    node: NodeContext,
    wanted: dict[MemberKey, _Wanted],
    gpu_missing: dict[MemberKey, str],
    blocked: dict[int, str],
) -> tuple[ReplicaState, str] | None:
    key = member.replica
    model_path = w.dep.spec.model.path
    if not model_path_allowed(node, model_path):
        return "Pending", (
            f"model path {model_path} is outside this node's allowed model roots "
            f"({', '.join(node.allowed_model_roots)})"
        )
    record = inventory.restarts.get(key)
    failures, last, why = 0, now, "failed"
    if record is not None:
        failures = node.backoff.effective_failures(record, now)
        last = record.last_failure_at if record.last_failure_at is not None else now
        why = record.last_reason or "failed"
    if key in work.failed_now:
        failures += 1
        last = now
    if failures > 0:
        delay = node.backoff.delay(key, failures)
        if w.placement.multi_node and (
            member.role != "engine" or mp_multi_node(w.dep, w.placement)
        ):
            # A multi-node group does not re-form at once, not even after its first
            # failure: its Ray nodes start again no sooner than the initial backoff after
            # the failure tick, so that followers see the leader's head go and leave the
            # old cluster, and the leader sees a lost member, before anyone joins again
            # (a worker attached to a dead head looks joined until its raylet gives up,
            # RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default). The time the stop
            # itself takes counts towards it. The same for every rank of an mp multi-node
            # replica: a leader engine restarted at once would look unchanged to its
            # followers, whose ranks still belong to the dead group.
            delay = max(delay, node.backoff.initial_s)
        at = last + delay
        if at > now:
            return "CrashLoopBackOff", f"restart {failures} in {at - now:.0f}s ({why})"
    if member in gpu_missing:
        detail = gpu_missing[member]
        if blocked:
            detail += "; " + "; ".join(blocked[i] for i in sorted(blocked))
        if not observed.gpus.available:
            detail += f"; GPUs not observable: {observed.gpus.error or 'NVML unavailable'}"
        return "Pending", f"waiting for GPUs: {detail}"
    p = w.placement
    mp_multi = mp_multi_node(w.dep, p)
    if mp_multi and p.leader != node.name:
        # a follower rank joins the leader's rendezvous: only once the leader's engine
        # runs at this very hash
        peer = observed.peers.get(key)
        if peer is None or peer.spec_hash != w.spec_hash or not peer.head_up:
            seen = "unknown" if peer is None else (
                f"at hash {peer.spec_hash}" if peer.head_up else "engine not running"
            )
            return "Pending", (
                f"waiting for leader {p.leader}'s engine at hash {w.spec_hash} (leader {seen})"
            )
    if p.multi_node and not mp_multi and member.role == "engine":
        head = MemberKey(key, "ray-head")
        head_proc = observed.processes.get(head)
        if head_proc is None or not head_proc.running or head_proc.spec_hash != w.spec_hash:
            return "Pending", "waiting for this replica's Ray head to start"
        view = observed.ray.get(key)
        expected = len(p.nodes)
        alive = len(view.alive_nodes) if view else 0
        gpus = view.gpus if view else 0.0
        need_gpus = p.gpus_per_node * expected
        if alive < expected or gpus < need_gpus:
            reason = f"waiting for Ray members: {alive}/{expected} nodes, {gpus:g}/{need_gpus} GPUs"
            if view is not None:
                reason += f"; missing {_missing_nodes(p.nodes, view.alive_nodes, work.addresses)}"
                if view.mismatched:
                    reason += f"; not counted, at another spec hash: {', '.join(view.mismatched)}"
            return "Pending", reason
    if p.multi_node and member.role == "ray-worker":
        peer = observed.peers.get(key)
        if peer is None or peer.spec_hash != w.spec_hash or not peer.head_up:
            seen = "unknown" if peer is None else f"at hash {peer.spec_hash}"
            return "Pending", (
                f"waiting for leader {p.leader}'s Ray head at hash {w.spec_hash} (leader {seen})"
            )
    if w.dep.spec.rollout.strategy == "Recreate":
        old = [
            m
            for m, proc in observed.processes.items()
            if m.replica.deployment == key.deployment
            and proc.running
            and proc.spec_hash != w.spec_hash
            and m not in work.stopping
        ]
        if old:
            return "Pending", f"Recreate: waiting for {len(old)} old member(s) to stop"
    return None


def _launch(
    node: NodeContext, desired: Desired, w: _Wanted, gpus: tuple[int, ...]
) -> LaunchSpec:
    if w.member.role == "engine":
        return engine_launch(node, desired.cluster, w.dep, w.placement, w.spec_hash, gpus)
    return ray_launch(node, desired.cluster, w.dep, w.placement, w.spec_hash, gpus)


def _status(
    w: _Wanted,
    state: ReplicaState,
    reason: str,
    node: str,
    proc: ProcessObservation | None,
    launch: LaunchSpec | None = None,
    old: bool = False,
) -> ReplicaStatus:
    gpus = launch.gpus if launch else (proc.gpus if proc else ())
    return ReplicaStatus(
        replica=w.member.replica,
        state=state,
        reason=reason,
        role=_role_of(w.placement, node),
        nodes=w.placement.nodes,
        spec_hash=w.spec_hash if not old or proc is None else proc.spec_hash,
        gpus=gpus,
        port=w.placement.port,
    )


def _running_status(
    work: _Work,
    w: _Wanted,
    proc: ProcessObservation,
    observed: ObservedState,
    node: NodeContext,
    inventory: InventoryModel,
) -> None:
    key = w.member.replica
    if (
        w.member.role == "engine"
        and mp_multi_node(w.dep, w.placement)
        and w.placement.leader != node.name
    ):
        # a headless follower rank: the leader's engine decides the replica's state
        peer = observed.peers.get(key)
        if peer is not None and peer.ready and peer.spec_hash == w.spec_hash:
            record = inventory.restarts.get(key)
            if record is None or record.ready_since is None:
                work.actions.append(MarkReady(key, f"{key}: ready"))
            work.statuses[key] = _status(w, "Ready", "serving (led by the leader)", node.name, proc)
        elif peer is None:
            work.statuses[key] = _status(
                w, "Starting", f"engine rank running; leader {w.placement.leader} unreachable",
                node.name, proc,
            )
        else:
            work.statuses[key] = _status(
                w, "Starting", "engine rank running; waiting for the leader's engine",
                node.name, proc,
            )
        return
    if w.member.role == "engine":
        if proc.health == "ready":
            state: ReplicaState = "Ready"
            reason = "serving"
            record = inventory.restarts.get(key)
            if record is None or record.ready_since is None:
                work.actions.append(MarkReady(key, f"{key}: ready"))
        elif proc.health == "unhealthy":
            state, reason = "Starting", f"health probe failing: {proc.detail}"
        else:
            state, reason = "Starting", "loading (health probe not answering yet)"
        work.statuses[key] = _status(w, state, reason, node.name, proc)
        return
    # a Ray member: the engine (on the leader) decides the replica's state; a follower
    # reports what the leader says
    if key in work.statuses:
        return
    peer = observed.peers.get(key)
    if w.member.role == "ray-worker":
        if peer is not None and peer.ready and peer.spec_hash == w.spec_hash:
            work.statuses[key] = _status(w, "Ready", "serving (led by the leader)", node.name, proc)
        elif peer is None:
            work.statuses[key] = _status(
                w, "Starting", f"Ray worker running; leader {w.placement.leader} unreachable",
                node.name, proc,
            )
        else:
            work.statuses[key] = _status(
                w, "Starting", "Ray worker joined; waiting for the leader's engine", node.name, proc
            )


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
