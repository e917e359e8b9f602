"""Restart backoff: first restart at once, then initial x 2^(n-2) up to a cap, with jitter.

Pure: the jitter is derived from the replica and failure count, not from a random
source, so `plan()` stays deterministic and every tick agrees with the last one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from reconciler.core.vocabulary import ReplicaKey, RestartRecord


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float = 10.0
    max_s: float = 300.0
    reset_after_s: float = 600.0
    jitter: float = 0.1  # fraction of the delay, spread over [-jitter, +jitter]

    def delay(self, key: ReplicaKey, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure before restarting."""
        if failures <= 1:
            return 0.0
        base = min(self.max_s, self.initial_s * 2.0 ** (failures - 2))
        digest = hashlib.sha256(f"{key}:{failures}".encode()).digest()
        unit = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF  # in [0, 1]
        return max(0.0, min(self.max_s, base * (1 + self.jitter * (2 * unit - 1))))

    def effective_failures(self, record: RestartRecord, now: float) -> int:
        """Failures still counting: a healthy period of reset_after_s forgives them."""
        if record.ready_since is not None and now - record.ready_since >= self.reset_after_s:
            return 0
        return record.failures

    def next_start_at(self, key: ReplicaKey, record: RestartRecord, now: float) -> float:
        failures = self.effective_failures(record, now)
        if failures == 0 or record.last_failure_at is None:
            return now
        return record.last_failure_at + self.delay(key, failures)
