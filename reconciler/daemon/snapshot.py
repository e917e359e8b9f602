"""What the status document, its conditions and the metrics are built from.

The reconcile worker takes one `Snapshot` after every iteration; everything built from
it (reconciler.daemon.status, .conditions, .gpu_account) is a pure function of it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.control.reconcile import TickResult
from reconciler.core.vocabulary import ReplicaKey, ReplicaStatus
from reconciler.desired.source_sync import SourceFailure
from reconciler.desired.state import DesiredState
from reconciler.ports.git import CommitInfo


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
    pid: int  # the daemon's own
    errors: Sequence[ErrorEntry] = ()
    reloaded_at: float | None = None
    extra_notes: Sequence[str] = field(default_factory=tuple)
    # failures that led to a restart, per replica, from the inventory (survives restarts)
    restarts: Mapping[ReplicaKey, int] = field(default_factory=dict)


def local_replicas(snap: Snapshot) -> list[ReplicaStatus]:
    """The replicas this node takes part in (leader, follower or single)."""
    if snap.tick is None:
        return []
    return [s for s in snap.tick.plan.replicas.values() if snap.node in s.nodes]
