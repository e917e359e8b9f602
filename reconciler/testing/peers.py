"""What other nodes would report, set by the test.

Set `reports` directly, or say what a peer runs with `lead()`: it records the
`PeerReplica` that the real port (reconciler.ports.peers.HttpPeers) reads from that
peer's /status, checked by tests/contract/test_peers_contract.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.vocabulary import PeerReplica, ReplicaKey


class FakePeers:
    def __init__(self) -> None:
        self.reports: dict[ReplicaKey, PeerReplica] = {}

    def replicas(self) -> Mapping[ReplicaKey, PeerReplica]:
        return dict(self.reports)

    def lead(
        self, key: ReplicaKey, spec_hash: str, *, ready: bool, ray_head: bool = False
    ) -> None:
        """A peer leads `key` and runs its engine at `spec_hash` (answering probes when
        `ready`), beside a running Ray head at the same hash when `ray_head`."""
        self.reports[key] = PeerReplica(
            spec_hash=spec_hash,
            ready=ready,
            head_up=ray_head,
            engine_hash=spec_hash,
            engine_ready=ready,
        )

    def unreachable(self) -> None:
        """Every peer stops answering: what they led is simply absent."""
        self.reports.clear()
