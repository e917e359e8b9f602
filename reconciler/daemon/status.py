"""The node's status document (served at /status) and its conditions. Pure.

Conditions follow Flux (kstatus):

- Stalled=True when the latest attempted revision was refused for a reason no retry can
  fix (invalid YAML or schema, missing or bad signature, non-fast-forward, missing
  branch or path). Only a new commit clears it. The last good revision keeps running.
- Reconciling=True while actions are in flight, while a replica of this node is not
  Ready, or while the desired revision has not been applied yet.
- Ready=True when the applied revision is the attempted one and every replica of this
  node is Ready; Unknown while progressing; False when stalled, when a replica failed or
  when there is no desired state at all.

`lastTransitionTime` changes only when a condition's status changes (`Conditions` keeps
the previous ones). The document's shape is `status.schema.json`, checked in tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from reconciler.control.reconcile import TickResult
from reconciler.core.vocabulary import (
    GpuInventory,
    ObservedState,
    RayView,
    ReplicaKey,
    ReplicaStatus,
)
from reconciler.desired.source_sync import SourceFailure
from reconciler.desired.state import DesiredState
from reconciler.ports.git_source import CommitInfo, redact_url

API_VERSION = "reconciler.dev/v1alpha1"
ConditionStatus = Literal["True", "False", "Unknown"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    t = _dt.datetime.fromtimestamp(ts, _dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ErrorEntry:
    at: float
    source: str  # "source", "apply", "tick", "config"
    message: str


@dataclass(frozen=True)
class Snapshot:
    """Everything status and metrics are built from, taken by the reconcile worker."""

    node: str
    now: float
    started_at: float
    source_url: str
    branch: str
    path: str
    fetched: CommitInfo | None
    attempted: CommitInfo | None
    good: CommitInfo | None
    applied: str | None
    failure: SourceFailure | None
    last_fetch_success: float | None
    desired: DesiredState | None
    tick: TickResult | None
    errors: Sequence[ErrorEntry] = ()
    reloaded_at: float | None = None
    extra_notes: Sequence[str] = field(default_factory=tuple)
    # failures that led to a restart, per replica, from the inventory (survives restarts)
    restarts: Mapping[ReplicaKey, int] = field(default_factory=dict)


# --- conditions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str


def local_replicas(snap: Snapshot) -> list[ReplicaStatus]:
    if snap.tick is None:
        return []
    return [s for s in snap.tick.plan.replicas.values() if snap.node in s.nodes]


def is_stalled(failure: SourceFailure | None) -> bool:
    return failure is not None and not failure.retryable


def compute_conditions(snap: Snapshot) -> list[Condition]:
    failure = snap.failure
    stalled = is_stalled(failure)
    replicas = local_replicas(snap)
    not_ready = [s for s in replicas if s.state != "Ready"]
    failed = [s for s in replicas if s.state in ("Failed", "CrashLoopBackOff")]
    in_flight = snap.tick is not None and not snap.tick.plan.empty
    desired_rev = snap.desired.revision if snap.desired is not None else None
    unapplied = desired_rev is not None and snap.applied != desired_rev

    if stalled and failure is not None:
        what = f"revision {failure.revision[:12]}" if failure.revision else "the source"
        keep = (
            f"; running last good revision {snap.good.revision[:12]}" if snap.good else
            "; no good revision yet, nothing is started or stopped"
        )
        stalled_c = Condition("Stalled", "True", failure.reason,
                              f"{what} refused: {failure.message}{keep}")
    else:
        stalled_c = Condition("Stalled", "False", "Succeeded", "")

    if snap.tick is None:
        reconciling = Condition("Reconciling", "True", "Progressing", "first reconcile pending")
    elif in_flight or not_ready or unapplied:
        parts = []
        if in_flight:
            n = sum(1 for a in snap.tick.plan.actions if type(a).__name__ != "MarkReady")
            parts.append(f"{n} action(s) in flight")
        if not_ready:
            parts.append(
                ", ".join(f"{s.replica} {s.state}" for s in not_ready[:5])
                + (f" and {len(not_ready) - 5} more" if len(not_ready) > 5 else "")
            )
        if unapplied and desired_rev is not None:
            parts.append(f"applying revision {desired_rev[:12]}")
        reconciling = Condition("Reconciling", "True", "Progressing", "; ".join(parts))
    else:
        reconciling = Condition("Reconciling", "False", "Succeeded", "")

    attempted_rev = snap.attempted.revision if snap.attempted else None
    if stalled and failure is not None:
        ready = Condition("Ready", "False", failure.reason, stalled_c.message)
    elif snap.desired is None:
        if failure is not None:
            ready = Condition("Ready", "False", failure.reason, failure.message)
        else:
            ready = Condition("Ready", "Unknown", "Progressing", "no desired state yet")
    elif failed:
        ready = Condition(
            "Ready", "False", "ReplicaFailed",
            "; ".join(f"{s.replica} {s.state}: {s.reason}" for s in failed[:3]),
        )
    elif (
        snap.tick is not None
        and snap.applied is not None
        and snap.applied == attempted_rev
        and not not_ready
        and not in_flight
    ):
        msg = f"Applied revision: {snap.branch}@sha1:{snap.applied}"
        if failure is not None:
            msg += f" (source: {failure.reason}: {failure.message})"
        ready = Condition("Ready", "True", "ReconciliationSucceeded", msg)
    else:
        ready = Condition("Ready", "Unknown", "Progressing",
                          reconciling.message or "reconciliation in progress")
    return [ready, reconciling, stalled_c]


class Conditions:
    """Remembers when each condition last changed status (Flux's lastTransitionTime)."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}

    def stamp(self, conditions: Sequence[Condition], now: float) -> list[dict[str, Any]]:
        out = []
        for c in conditions:
            prev = self._since.get(c.type)
            if prev is None or prev[0] != c.status:
                self._since[c.type] = (c.status, now)
            out.append(
                {
                    "type": c.type,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": iso(self._since[c.type][1]),
                }
            )
        return out


# --- GPUs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuAccount:
    counts: Mapping[str, int]
    devices: list[dict[str, Any]]
    declared: dict[str, Any] | None
    simulated: bool


def gpu_account(desired: DesiredState | None, observed: ObservedState | None,
                node: str) -> GpuAccount:
    inv = observed.gpus if observed is not None else GpuInventory(available=False)
    declared: dict[str, Any] | None = None
    declared_count = 0
    if desired is not None:
        for n in desired.cluster.spec.nodes:
            if n.name == node:
                declared = {
                    "count": n.gpus.count,
                    "model": n.gpus.model,
                    "memoryGib": n.gpus.memory_gib,
                }
                declared_count = n.gpus.count
    assigned: set[int] = set()
    foreign_pids: frozenset[int] = frozenset()
    if observed is not None:
        for p in observed.processes.values():
            if p.running:
                assigned.update(p.gpus)
        foreign_pids = observed.foreign_pids
    counts = {"assigned": 0, "free": 0, "foreign": 0, "missing": 0, "unhealthy": 0}
    devices = []
    for g in inv.gpus:
        strangers = sorted(pid for pid in g.process_pids if pid in foreign_pids)
        if not g.healthy:
            state = "unhealthy"
        elif strangers:
            state = "foreign"
        elif g.index in assigned:
            state = "assigned"
        else:
            state = "free"
        counts[state] += 1
        devices.append(
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "memoryTotalMib": g.memory_total_mib,
                "memoryUsedMib": g.memory_used_mib,
                "utilizationPct": g.utilization_pct,
                "temperatureC": g.temperature_c,
                "healthy": g.healthy,
                "healthDetail": g.health_detail,
                "state": state,
                "foreignPids": strangers,
            }
        )
    if declared is not None:
        counts["missing"] = max(0, declared_count - len(inv.gpus))
    return GpuAccount(counts, devices, declared, inv.simulated)


# --- the document ----------------------------------------------------------------------------


def _commit(info: CommitInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "revision": info.revision,
        "subject": info.subject,
        "author": info.author,
        "committedAt": info.committed_at,
    }


def _applied(snap: Snapshot) -> dict[str, Any] | None:
    if snap.applied is None:
        return None
    for info in (snap.good, snap.attempted, snap.fetched):
        if info is not None and info.revision == snap.applied:
            return _commit(info)
    return {"revision": snap.applied, "subject": None, "author": None, "committedAt": None}


_ROLE_ORDER = {"ray-head": 0, "ray-worker": 1, "engine": 2}


def _members(s: ReplicaStatus, observed: ObservedState | None) -> list[dict[str, Any]]:
    """The processes this node runs for the replica, as observed (running state, not
    desired): peers read the leader's Ray head and engine from here."""
    if observed is None:
        return []
    procs = [p for m, p in observed.processes.items() if m.replica == s.replica]
    procs.sort(key=lambda p: _ROLE_ORDER.get(p.member.role, 9))
    return [
        {
            "role": p.member.role,
            "specHash": p.spec_hash,
            "running": p.running,
            "health": p.health,
            "pid": p.pid,
            "gpus": list(p.gpus),
            "port": p.port,
        }
        for p in procs
    ]


def _ray(view: RayView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "members": list(view.alive_nodes),
        "gpus": view.gpus,
        "mismatched": list(view.mismatched),
        "lost": list(view.lost),
        "notes": list(view.notes),
    }


def _replica(s: ReplicaStatus, observed: ObservedState | None = None) -> dict[str, Any]:
    view = observed.ray.get(s.replica) if observed is not None else None
    return {
        "deployment": s.replica.deployment,
        "index": s.replica.index,
        "state": s.state,
        "reason": s.reason,
        "role": s.role,
        "nodes": list(s.nodes),
        "gpus": list(s.gpus),
        "port": s.port,
        "specHash": s.spec_hash,
        "members": _members(s, observed),
        "ray": _ray(view) if s.role == "leader" else None,
    }


def ray_notes(observed: ObservedState | None) -> list[str]:
    """Version mismatches found while reading a replica's Ray head (leader or follower)."""
    if observed is None:
        return []
    return [f"{key}: {note}" for key, view in sorted(observed.ray.items()) for note in view.notes]


def _cluster(desired: DesiredState | None) -> dict[str, Any] | None:
    if desired is None:
        return None
    c = desired.cluster
    return {
        "name": c.metadata.name,
        "nodes": [
            {"name": n.name, "address": n.address, "statusPort": n.status_port}
            for n in c.spec.nodes
        ],
    }


def build_status(snap: Snapshot, conditions: Conditions) -> dict[str, Any]:
    conds = compute_conditions(snap)
    tick = snap.tick
    replicas = list(tick.plan.replicas.values()) if tick is not None else []
    deployments = []
    if snap.desired is not None:
        for name, dep in snap.desired.deployments.items():
            mine = [s for s in replicas if s.replica.deployment == name]
            deployments.append(
                {
                    "name": name,
                    "servedName": dep.spec.model.served_name,
                    "model": dep.spec.model.path or dep.spec.model.hub_id or "",
                    "replicas": dep.spec.replicas,
                    "suspend": dep.spec.suspend,
                    "parallelism": {
                        "tensor": dep.spec.parallelism.tensor,
                        "pipeline": dep.spec.parallelism.pipeline,
                        "data": dep.spec.parallelism.data,
                    },
                    "port": dep.spec.port,
                    "localReplicas": len([s for s in mine if snap.node in s.nodes]),
                    "readyReplicas": len(
                        [s for s in mine if snap.node in s.nodes and s.state == "Ready"]
                    ),
                }
            )
    account = gpu_account(snap.desired, tick.observed if tick else None, snap.node)
    inv = tick.observed.gpus if tick is not None else None
    notes = list(tick.plan.notes) if tick is not None else []
    notes.extend(ray_notes(tick.observed if tick is not None else None))
    notes.extend(snap.extra_notes)
    failure = snap.failure
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeStatus",
        "node": snap.node,
        "observedAt": iso(snap.now),
        "daemon": {
            "pid": os.getpid(),
            "startedAt": iso(snap.started_at),
            "uptimeSeconds": round(max(0.0, snap.now - snap.started_at), 3),
            "configReloadedAt": iso(snap.reloaded_at),
        },
        "source": {
            "url": redact_url(snap.source_url),
            "branch": snap.branch,
            "path": snap.path,
            "lastFetchSuccessAt": iso(snap.last_fetch_success),
            "failure": None if failure is None else {
                "reason": failure.reason,
                "message": failure.message,
                "revision": failure.revision,
                "retryable": failure.retryable,
                "problems": [str(p) for p in failure.problems[:50]],
            },
        },
        "revisions": {
            "fetched": _commit(snap.fetched),
            "attempted": _commit(snap.attempted),
            "applied": _applied(snap),
            "lastGood": _commit(snap.good),
        },
        "conditions": conditions.stamp(conds, snap.now),
        "deployments": deployments,
        "replicas": [
            {**_replica(s, tick.observed if tick is not None else None),
             "restarts": snap.restarts.get(s.replica, 0)}
            for s in replicas
        ],
        "gpus": {
            "declared": account.declared,
            "observed": {
                "count": len(inv.gpus) if inv is not None else 0,
                "available": inv.available if inv is not None else False,
                "simulated": account.simulated,
                "error": inv.error if inv is not None else "not observed yet",
                "driverVersion": inv.driver_version if inv is not None else "",
                "cudaVersion": inv.cuda_version if inv is not None else "",
                "devices": account.devices,
            },
            "counts": dict(account.counts),
            "simulated": account.simulated,
            "foreignPids": sorted(tick.observed.foreign_pids) if tick is not None else [],
        },
        "cluster": _cluster(snap.desired),
        "notes": notes,
        "lastTick": None if tick is None else {
            "reconcileId": tick.reconcile_id,
            "revision": tick.revision,
            "startedAt": iso(tick.started_at),
            "durationSeconds": round(tick.duration_s, 6),
            "converged": tick.converged,
            "actions": [
                {"action": type(r.action).__name__,
                 "reason": str(getattr(r.action, "reason", "")),
                 "ok": r.ok, "error": r.error}
                for r in tick.results
            ],
        },
        "lastErrors": [
            {"at": iso(e.at), "source": e.source, "message": e.message} for e in snap.errors
        ],
    }


def one_line(status: Mapping[str, Any]) -> str:
    """The sd_notify STATUS= summary."""
    conds = {c["type"]: c for c in status.get("conditions", [])}
    ready = conds.get("Ready", {})
    applied = (status.get("revisions", {}).get("applied") or {}).get("revision") or "none"
    reps = status.get("replicas", [])
    node = status.get("node", "")
    n_ready = sum(1 for r in reps if r["state"] == "Ready" and node in r["nodes"])
    n_local = sum(1 for r in reps if node in r["nodes"])
    text = (
        f"Ready={ready.get('status', 'Unknown')} ({ready.get('reason', '')}); "
        f"applied {applied[:12]}; replicas {n_ready}/{n_local} ready"
    )
    if conds.get("Stalled", {}).get("status") == "True":
        text += f"; STALLED: {conds['Stalled']['reason']}"
    return text


def status_schema() -> dict[str, Any]:
    text = resources.files("reconciler.daemon").joinpath("status.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data
