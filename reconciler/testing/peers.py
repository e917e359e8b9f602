"""What other nodes would report, set by the test."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.vocabulary import PeerReplica, ReplicaKey


class FakePeers:
    def __init__(self) -> None:
        self.reports: dict[ReplicaKey, PeerReplica] = {}

    def replicas(self) -> Mapping[ReplicaKey, PeerReplica]:
        return dict(self.reports)
