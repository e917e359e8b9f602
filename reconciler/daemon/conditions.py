"""The node's Ready / Reconciling / Stalled conditions, Flux (kstatus) style.

- Stalled=True when the latest attempted revision was refused for a reason no retry can
  fix (invalid YAML or schema, missing or bad signature, non-fast-forward, missing
  branch or path). Only a new commit clears it. The last good revision keeps running.
- Reconciling=True while actions are in flight, while a replica of this node is not
  Ready, or while the desired revision has not been applied yet.
- Ready=True when the applied revision is the attempted one and every replica of this
  node is Ready; Unknown while progressing; False when stalled, when a replica failed or
  when there is no desired state at all.

`lastTransitionTime` changes only when a condition's status changes (`Conditions` keeps
the previous ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.daemon.snapshot import Snapshot, iso, local_replicas
from reconciler.desired.source_sync import SourceFailure
from schemas import status as doc
from schemas.status import ConditionStatus, ConditionType


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str


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

    def stamp(self, conditions: Sequence[Condition], now: float) -> list[doc.Condition]:
        out = []
        for c in conditions:
            prev = self._since.get(c.type)
            if prev is None or prev[0] != c.status:
                self._since[c.type] = (c.status, now)
            out.append(
                doc.Condition(
                    type=c.type,
                    status=c.status,
                    reason=c.reason,
                    message=c.message,
                    last_transition_time=iso(self._since[c.type][1]) or "",
                )
            )
        return out
