"""What other nodes would report, set by the test.

Say what a peer runs with `lead(..., by=node)`: it records the `PeerReplica` that the
real port (reconciler.ports.peers.HttpPeers) reads from that peer's /status, checked by
tests/contract/test_peers_contract.py. Like the real port, only the nodes asked answer;
`asked` keeps each call's names.
"""

from __future__ import annotations

from collections.abc import Collection

from reconciler.core.vocabulary import PeerReplica, ReplicaKey
from reconciler.ports.peers import PeerAnswers


class FakePeers:
    def __init__(self) -> None:
        self.reports: dict[str, dict[ReplicaKey, PeerReplica]] = {}  # by leading node
        self.asked: list[tuple[str, ...]] = []

    def replicas(self, nodes: Collection[str]) -> PeerAnswers:
        names = tuple(sorted(nodes))
        self.asked.append(names)
        out: dict[ReplicaKey, PeerReplica] = {}
        for name in names:
            out.update(self.reports.get(name, {}))
        return PeerAnswers(out, [n for n in names if n in self.reports])

    def leads_nothing(self, by: str) -> None:
        """Node `by` answers, leading nothing (every replica it led is gone)."""
        self.reports[by] = {}

    def lead(
        self, key: ReplicaKey, spec_hash: str, *, ready: bool, by: str, ray_head: bool = False,
        draining: bool = False,
    ) -> None:
        """Node `by` leads `key` and runs its engine at `spec_hash` (answering probes when
        `ready`), beside a running Ray head at the same hash when `ray_head`; `draining`:
        it reports the replica Draining."""
        self.reports.setdefault(by, {})[key] = PeerReplica(
            spec_hash=spec_hash,
            ready=ready,
            head_up=ray_head,
            engine_hash=spec_hash,
            engine_ready=ready,
            draining=draining,
        )

    def unreachable(self) -> None:
        """Every peer stops answering: what they led is simply absent, and none of them is
        in `answered`."""
        self.reports.clear()
