"""The routing table: served model name -> Ready replicas across the cluster. Pure.

Built from the daemons' status documents (this node's and its peers', read as
`schemas.status.NodeStatus`). Each replica is
taken only from the status of the node that leads it (its first node): that daemon runs
and probes the engine, so its word on Ready is the one that counts; the other nodes plan
the same replica without observing it. A replica that is Draining, Starting, failed or
gone is simply not in the table, so the next request goes elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas.status import NodeStatus

ROUTABLE_ROLES = ("single", "leader")


@dataclass(frozen=True, order=True)
class Upstream:
    """One Ready engine that serves a model."""

    model: str  # the served name clients ask for
    deployment: str
    index: int
    node: str
    host: str
    port: int
    spec_hash: str = ""
    member: str = "engine"  # or "surge": a rollout's new engine beside the old one

    @property
    def id(self) -> str:
        short = f"#{self.spec_hash[:8]}" if self.spec_hash else ""
        role = "~surge" if self.member == "surge" else ""
        return f"{self.deployment}/{self.index}{role}{short}@{self.node}"

    @property
    def replica_label(self) -> str:
        """Bounded metric label: deployment/index (not the hash, not the node)."""
        return f"{self.deployment}/{self.index}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class RoutingTable:
    ready: Mapping[str, tuple[Upstream, ...]] = field(default_factory=dict)
    # every served name some daemon knows of (Ready or not): 503 for these, 404 for others
    known: frozenset[str] = frozenset()

    def upstreams(self, model: str) -> tuple[Upstream, ...]:
        return self.ready.get(model, ())

    def served(self) -> list[str]:
        return sorted(m for m, ups in self.ready.items() if ups)


def _addresses(docs: Iterable[NodeStatus]) -> dict[str, str]:
    out: dict[str, str] = {}
    for doc in docs:
        for n in doc.cluster.nodes if doc.cluster is not None else ():
            out.setdefault(n.name, n.address)
    return out


def upstreams_of(doc: NodeStatus, addresses: Mapping[str, str]) -> list[Upstream]:
    """The Ready replicas a node's status document says it leads; for a replica that is
    not Ready (Draining, Starting) during a surge rollout, its Ready surge engine."""
    if doc.node not in addresses:
        return []
    served = {d.name: d.served_name for d in doc.deployments}
    out = []
    for r in doc.replicas:
        if not (r.nodes and r.nodes[0] == doc.node and r.role in ROUTABLE_ROLES
                and r.deployment in served):
            continue
        if r.state == "Ready" and r.port:
            out.append(Upstream(model=served[r.deployment], deployment=r.deployment,
                                index=r.index, node=doc.node, host=addresses[doc.node],
                                port=r.port, spec_hash=r.spec_hash))
            continue
        out.extend(
            Upstream(model=served[r.deployment], deployment=r.deployment, index=r.index,
                     node=doc.node, host=addresses[doc.node], port=m.port,
                     spec_hash=m.spec_hash, member="surge")
            for m in r.members or ()
            if m.role == "surge" and m.running and m.health == "ready" and m.port > 0
        )
    return out


def build_table(docs: Sequence[NodeStatus]) -> RoutingTable:
    addresses = _addresses(docs)
    ready: dict[str, dict[str, Upstream]] = {}
    known: set[str] = set()
    for doc in docs:
        known.update(d.served_name for d in doc.deployments)
        for up in upstreams_of(doc, addresses):
            ready.setdefault(up.model, {})[up.id] = up
    return RoutingTable(
        ready={m: tuple(sorted(ups.values())) for m, ups in ready.items()},
        known=frozenset(known),
    )
