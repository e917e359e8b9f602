"""A short in-memory history for the console's plots and timelines: GPU memory and
utilization, replica states, when each replica became Ready, and the revisions attempted,
applied and refused. Read-only over HTTP (`GET /history`).

Bounded on purpose: one sample per `interval_s` (5 s) kept for `keep_s` (an hour), and the
last `max_events` events. It is lost when the daemon restarts; Prometheus (deploy/) is the
place for anything longer. The worker records after each publish; HTTP threads read a
copy under the lock, so a reader never sees a half-written sample.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from schemas.status import NodeStatus

SAMPLE_INTERVAL_S = 5.0
KEEP_S = 3600.0
MAX_EVENTS = 200
MAX_PROBLEMS = 20  # error lines kept per refused revision


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class History:
    def __init__(self, *, interval_s: float = SAMPLE_INTERVAL_S, keep_s: float = KEEP_S,
                 max_events: int = MAX_EVENTS,
                 clock: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[dict[str, Any]] = deque(maxlen=max(1, int(keep_s / interval_s)))
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._states: dict[str, str] = {}
        self._ready_since: dict[str, float] = {}
        self._last_sample = float("-inf")
        self._attempted: str | None = None
        self._applied: str | None = None
        self._refused: tuple[str | None, str, str] | None = None

    def record(self, status: NodeStatus) -> None:
        """After each publish (worker thread). Cheap when nothing changed."""
        now = self._clock()
        with self._lock:
            self._replica_events(status, now)
            self._revision_events(status, now)
            if now - self._last_sample >= self.interval_s:
                self._last_sample = now
                self._samples.append(_sample(status, now))
            while self._samples and now - self._samples[0]["t"] > self.keep_s:
                self._samples.popleft()

    def _event(self, now: float, kind: str, **fields: Any) -> None:
        self._events.append({"at": _iso(now), "t": now, "kind": kind, **fields})

    def _replica_events(self, status: NodeStatus, now: float) -> None:
        seen: set[str] = set()
        for r in status.replicas:
            key = f"{r.deployment}/{r.index}"
            seen.add(key)
            before = self._states.get(key)
            if before == r.state:
                continue
            self._states[key] = r.state
            if r.state == "Ready":
                self._ready_since[key] = now
            else:
                self._ready_since.pop(key, None)
            self._event(now, "replica", replica=key, before=before, after=r.state,
                        reason=r.reason)
        for key in set(self._states) - seen:
            self._event(now, "replica", replica=key, before=self._states.pop(key),
                        after=None, reason="no longer planned here")
            self._ready_since.pop(key, None)

    def _revision_events(self, status: NodeStatus, now: float) -> None:
        revs = status.revisions
        attempted = revs.attempted.revision if revs.attempted else None
        if attempted and attempted != self._attempted:
            self._attempted = attempted
            self._event(now, "attempted", revision=attempted,
                        subject=revs.attempted.subject if revs.attempted else None)
        applied = revs.applied.revision if revs.applied else None
        if applied and applied != self._applied:
            self._applied = applied
            self._event(now, "applied", revision=applied,
                        subject=revs.applied.subject if revs.applied else None)
        failure = status.source.failure
        key = (failure.revision, failure.reason, failure.message) if failure else None
        if failure is not None and key != self._refused:
            self._event(now, "refused", revision=failure.revision, reason=failure.reason,
                        message=failure.message, retryable=failure.retryable,
                        problems=list(failure.problems[:MAX_PROBLEMS]))
        self._refused = key

    def view(self) -> dict[str, Any]:
        """The JSON served at /history (any thread)."""
        with self._lock:
            return {
                "intervalSeconds": self.interval_s,
                "keepSeconds": self.keep_s,
                "now": self._clock(),
                "samples": list(self._samples),
                "events": list(self._events),
                "readySince": {k: _iso(t) for k, t in self._ready_since.items()},
            }


def _sample(status: NodeStatus, now: float) -> dict[str, Any]:
    gpus = [{"index": d.index, "memoryUsedMib": d.memory_used_mib,
             "memoryTotalMib": d.memory_total_mib, "utilizationPct": d.utilization_pct,
             "temperatureC": d.temperature_c}
            for d in status.gpus.observed.devices]
    replicas = {f"{r.deployment}/{r.index}": r.state for r in status.replicas}
    return {"t": now, "gpus": gpus, "replicas": replicas}
