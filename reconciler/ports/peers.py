"""The peers port: what other nodes report about the replicas they lead.

Used only to order rollouts and to let followers join a head of the right spec hash;
never to decide placement (that is computed locally from the revision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from reconciler.model import PeerReplica, ReplicaKey


class PeerPort(Protocol):
    def replicas(self) -> Mapping[ReplicaKey, PeerReplica]:
        """Best effort: unreachable peers are simply absent."""
        ...


class NoPeers:
    """A one-node cluster has nobody to ask."""

    def replicas(self) -> Mapping[ReplicaKey, PeerReplica]:
        return {}
