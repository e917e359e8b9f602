"""Prometheus metrics of one daemon, in a registry of its own (never the global one).

Labels stay bounded: `result`, `reason` and `state` take values from fixed sets,
`deployment` from the desired state; revisions appear only in the `_info` metric, one
series at a time. Every metric is documented in docs/metrics.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from reconciler.core.vocabulary import ReplicaState

__all__ = ["CONTENT_TYPE_LATEST", "GPU_STATES", "REPLICA_STATES", "Metrics"]

REPLICA_STATES: tuple[ReplicaState, ...] = (
    "Pending", "Starting", "Ready", "Draining", "Stopped", "Failed", "CrashLoopBackOff",
)
GPU_STATES = ("assigned", "free", "foreign", "missing", "unhealthy", "unmanaged")
WEBHOOK_RESULTS = ("accepted", "unauthorized", "disabled", "too_large", "bad_request")


class Metrics:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._monotonic = monotonic
        self.reconcile_total = Counter(
            "reconciler_reconcile", "Reconcile ticks by result (success or error).",
            ["result"], registry=r,
        )
        self.reconcile_duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of one reconcile tick (observe, plan, apply).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.applied_info = Gauge(
            "reconciler_last_applied_revision_info",
            "The revision last applied on this node (value 1; the revision is the label).",
            ["revision"], registry=r,
        )
        self.attempted_info = Gauge(
            "reconciler_last_attempted_revision_info",
            "The revision last attempted on this node (value 1; the revision is the label).",
            ["revision"], registry=r,
        )
        self.fetch_success_ts = Gauge(
            "reconciler_source_last_fetch_success_timestamp_seconds",
            "Unix time of the last successful fetch of the git source (0: never).",
            registry=r,
        )
        self.fetch_since = Gauge(
            "reconciler_source_seconds_since_last_fetch_success",
            "Seconds since the last successful fetch (since daemon start if none yet).",
            registry=r,
        )
        self.fetch_failures = Counter(
            "reconciler_source_fetch_failures", "Failed fetches of the git source by reason.",
            ["reason"], registry=r,
        )
        self.revisions_refused = Counter(
            "reconciler_source_revisions_refused",
            "Fetched revisions refused (signature, fast-forward, invalid documents) by reason.",
            ["reason"], registry=r,
        )
        self.replicas = Gauge(
            "reconciler_replicas",
            "Replicas this node takes part in, by deployment and state.",
            ["deployment", "state"], registry=r,
        )
        self.engine_restarts = Counter(
            "reconciler_engine_restarts",
            "Restarts of a deployment's processes after a failure on this node.",
            ["deployment"], registry=r,
        )
        self.gpus = Gauge(
            "reconciler_gpus",
            "GPUs of this node by state: assigned, free, foreign, missing, unhealthy, unmanaged.",
            ["state"], registry=r,
        )
        self.gpus_simulated = Gauge(
            "reconciler_gpus_simulated",
            "1 when the GPUs are simulated from the node config (no NVML).", registry=r,
        )
        self.webhook_requests = Counter(
            "reconciler_webhook_requests", "Webhook requests by result.", ["result"], registry=r,
        )
        self.stalled = Gauge(
            "reconciler_stalled",
            "1 while the latest attempted revision is refused for a reason no retry can fix.",
            registry=r,
        )
        self.ready = Gauge(
            "reconciler_ready", "1 while the Ready condition is True.", registry=r,
        )
        self.illegal_transitions = Counter(
            "reconciler_illegal_transitions",
            "Replica state changes the lifecycle table refused, by edge (a bug to report).",
            ["from", "to"], registry=r,
        )
        for result in ("success", "error"):
            self.reconcile_total.labels(result)
        for result in WEBHOOK_RESULTS:
            self.webhook_requests.labels(result)
        for state in GPU_STATES:
            self.gpus.labels(state).set(0)
        self._started = monotonic()
        self._last_fetch_mono: float | None = None
        self.fetch_since.set_function(self._seconds_since_fetch)
        self._applied: str | None = None
        self._attempted: str | None = None
        self._deployments: set[str] = set()
        self._restarts_seen: dict[str, int] = {}
        self._illegal_seen: dict[tuple[str, str], int] = {}

    # --- updates (called by the reconcile worker) ----------------------------------------

    def _seconds_since_fetch(self) -> float:
        since = self._last_fetch_mono if self._last_fetch_mono is not None else self._started
        return max(0.0, self._monotonic() - since)

    def fetch_succeeded(self, wall: float) -> None:
        self.fetch_success_ts.set(wall)
        self._last_fetch_mono = self._monotonic()

    def fetch_failed(self, reason: str) -> None:
        self.fetch_failures.labels(reason).inc()

    def revision_refused(self, reason: str) -> None:
        self.revisions_refused.labels(reason).inc()

    def tick(self, ok: bool, duration_s: float) -> None:
        self.reconcile_total.labels("success" if ok else "error").inc()
        if not math.isnan(duration_s):
            self.reconcile_duration.observe(duration_s)

    def revisions(self, attempted: str | None, applied: str | None) -> None:
        self._swap_info(self.applied_info, "_applied", applied)
        self._swap_info(self.attempted_info, "_attempted", attempted)

    def _swap_info(self, gauge: Gauge, attr: str, value: str | None) -> None:
        old = getattr(self, attr)
        if old == value:
            return
        if old is not None:
            gauge.remove(old)
        if value is not None:
            gauge.labels(value).set(1)
        setattr(self, attr, value)

    def replica_states(
        self, deployments: Iterable[str], states: Iterable[tuple[str, ReplicaState]]
    ) -> None:
        """`deployments`: every desired deployment (zeros are exported for them);
        `states`: (deployment, state) of each replica this node takes part in."""
        names = set(deployments)
        counts: dict[tuple[str, str], int] = {}
        for dep, state in states:
            names.add(dep)
            counts[(dep, state)] = counts.get((dep, state), 0) + 1
        for gone in self._deployments - names:
            for state in REPLICA_STATES:
                self.replicas.remove(gone, state)
        for dep in names:
            for state in REPLICA_STATES:
                self.replicas.labels(dep, state).set(counts.get((dep, state), 0))
        self._deployments = names

    def restarts(self, totals: Mapping[str, int]) -> None:
        for dep, total in totals.items():
            delta = total - self._restarts_seen.get(dep, 0)
            if delta > 0:
                self.engine_restarts.labels(dep).inc(delta)
            self._restarts_seen[dep] = total

    def illegal(self, totals: Mapping[tuple[str, str], int]) -> None:
        """`totals`: refused state changes since start, by (from, to) state."""
        for (old, new), total in totals.items():
            delta = total - self._illegal_seen.get((old, new), 0)
            if delta > 0:
                self.illegal_transitions.labels(old, new).inc(delta)
            self._illegal_seen[(old, new)] = total

    def gpu_counts(self, counts: Mapping[str, int], simulated: bool) -> None:
        for state in GPU_STATES:
            self.gpus.labels(state).set(counts.get(state, 0))
        self.gpus_simulated.set(1 if simulated else 0)

    def conditions(self, *, stalled: bool, ready: bool) -> None:
        self.stalled.set(1 if stalled else 0)
        self.ready.set(1 if ready else 0)

    def webhook(self, result: str) -> None:
        self.webhook_requests.labels(result).inc()

    # --- exposition ------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)
