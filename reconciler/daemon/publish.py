"""After every iteration: one snapshot becomes the status document, the metrics and the
sd_notify STATUS= line. The HTTP threads read what was published last."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

from reconciler.control.reconcile import Reconciler
from reconciler.daemon.conditions import Conditions, is_stalled
from reconciler.daemon.gpu_account import gpu_account
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.sdnotify import Notifier
from reconciler.daemon.snapshot import ErrorEntry, Snapshot, local_replicas
from reconciler.daemon.status import build_status, one_line
from reconciler.desired.source_sync import SourceHealth
from schemas.nodeconfig import NodeConfig
from schemas.status import NodeStatus

log = logging.getLogger(__name__)


def take_snapshot(config: NodeConfig, health: SourceHealth, reconciler: Reconciler, *,
                  errors: tuple[ErrorEntry, ...], started_at: float,
                  reloaded_at: float | None) -> Snapshot:
    """What the worker knows right after an iteration (its own thread: nothing moves)."""
    sync = health.source_sync
    inventory = reconciler.inventory.current
    return Snapshot(
        node=config.node_name,
        now=time.time(),
        started_at=started_at,
        source_url=config.source.url,
        branch=config.source.branch,
        path=config.source.path,
        fetched=sync.fetched,
        attempted=sync.attempted,
        good=sync.good,
        applied=inventory.applied_revision,
        failure=health.failure,
        last_fetch_success=health.last_fetch_success,
        desired=sync.desired,
        tick=reconciler.last,
        pid=os.getpid(),
        errors=errors,
        reloaded_at=reloaded_at,
        restarts={key: rec.total_restarts for key, rec in inventory.restarts.items()},
    )


class Publisher:
    """Called by the reconcile worker only; `last` may be read from any thread."""

    def __init__(self, metrics: Metrics, notifier: Notifier) -> None:
        self.metrics = metrics
        self.notifier = notifier
        self._conditions = Conditions()  # the worker's: it remembers transition times
        self._lock = threading.Lock()
        self._status: NodeStatus | None = None
        self._ready_sent = False
        self._last_line = ""

    def last(self) -> NodeStatus | None:
        with self._lock:
            return self._status

    def publish(self, snap: Snapshot, *, restarts_total: dict[str, int],
                illegal_transitions: Mapping[tuple[str, str], int]) -> NodeStatus:
        status = build_status(snap, self._conditions)
        m = self.metrics
        m.revisions(snap.attempted.revision if snap.attempted else None, snap.applied)
        deployments = list(snap.desired.deployments) if snap.desired is not None else []
        m.replica_states(
            deployments, [(s.replica.deployment, s.state) for s in local_replicas(snap)]
        )
        m.restarts(restarts_total)
        m.illegal(illegal_transitions)
        account = gpu_account(snap.desired, snap.tick.observed if snap.tick else None, snap.node)
        m.gpu_counts(account.counts, account.simulated)
        ready = status.condition("Ready")
        m.conditions(stalled=is_stalled(snap.failure),
                     ready=ready is not None and ready.status == "True")
        with self._lock:
            self._status = status
        line = one_line(status)
        if not self._ready_sent:
            self.notifier.ready(line)
            self._ready_sent = True
            self._last_line = line
            log.info("ready", extra={"status": line})
        elif line != self._last_line:
            self.notifier.status(line)
            self._last_line = line
        return status
