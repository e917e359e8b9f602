"""Least outstanding requests, ties broken by a stable hash. Pure.

The hash is rendezvous hashing of (affinity key, replica id): among equally loaded
replicas, the same client (API key or the request's `user`) keeps landing on the same
replica, which keeps its prefix cache warm, while different clients spread out; adding or
removing a replica moves only the clients that hashed to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from reconciler.gateway.routing import Upstream


def tie_hash(affinity: str, upstream_id: str) -> int:
    digest = hashlib.blake2b(f"{affinity}\0{upstream_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(candidates: Sequence[Upstream], outstanding: Mapping[str, int], affinity: str,
         exclude: Collection[str] = ()) -> Upstream | None:
    """The replica with the fewest requests in flight from this gateway; None when every
    candidate is excluded (already tried)."""
    best: Upstream | None = None
    best_key: tuple[int, int] = (0, 0)
    for up in candidates:
        if up.id in exclude:
            continue
        # the largest hash wins a tie (rendezvous); negated so min() semantics hold
        key = (outstanding.get(up.id, 0), -tie_hash(affinity, up.id))
        if best is None or key < best_key:
            best, best_key = up, key
    return best
