"""The routing table: served model name -> Ready replicas across the cluster. Pure.

Built from the daemons' status documents (this node's and its peers'). Each replica is
taken only from the status of the node that leads it (its first node): that daemon runs
and probes the engine, so its word on Ready is the one that counts; the other nodes plan
the same replica without observing it. A replica that is Draining, Starting, failed or
gone is simply not in the table, so the next request goes elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def id(self) -> str:
        # the spec hash keeps an old and a surged new replica of the same index apart
        short = f"#{self.spec_hash[:8]}" if self.spec_hash else ""
        return f"{self.deployment}/{self.index}{short}@{self.node}"

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


def _addresses(docs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for doc in docs:
        cluster = doc.get("cluster") or {}
        for n in cluster.get("nodes") or []:
            if isinstance(n, Mapping) and n.get("name") and n.get("address"):
                out.setdefault(str(n["name"]), str(n["address"]))
    return out


def _served_names(doc: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in doc.get("deployments") or []:
        if isinstance(d, Mapping) and d.get("name") and d.get("servedName"):
            out[str(d["name"])] = str(d["servedName"])
    return out


def upstreams_of(doc: Mapping[str, Any], addresses: Mapping[str, str]) -> list[Upstream]:
    """The Ready replicas a node's status document says it leads."""
    node = doc.get("node")
    if not isinstance(node, str) or node not in addresses:
        return []
    served = _served_names(doc)
    out = []
    for r in doc.get("replicas") or []:
        try:
            nodes = list(r["nodes"])
            if (not nodes or nodes[0] != node or r["role"] not in ROUTABLE_ROLES
                    or r["state"] != "Ready" or not r.get("port")):
                continue
            model = served.get(str(r["deployment"]))
            if model is None:
                continue
            out.append(Upstream(model=model, deployment=str(r["deployment"]),
                                index=int(r["index"]), node=node, host=addresses[node],
                                port=int(r["port"]), spec_hash=str(r.get("specHash") or "")))
        except (KeyError, TypeError, ValueError):
            continue  # one odd entry must not hide the others
    return out


def build_table(docs: Sequence[Mapping[str, Any]]) -> RoutingTable:
    addresses = _addresses(docs)
    ready: dict[str, dict[str, Upstream]] = {}
    known: set[str] = set()
    for doc in docs:
        known.update(_served_names(doc).values())
        for up in upstreams_of(doc, addresses):
            ready.setdefault(up.model, {})[up.id] = up
    return RoutingTable(
        ready={m: tuple(sorted(ups.values())) for m, ups in ready.items()},
        known=frozenset(known),
    )
