"""Prometheus HTTP service discovery (`http_sd_configs`) for the engines of one node. Pure.

The daemon picks engine ports from the Cluster's range and replaces engines on every spec
change, so a static scrape config cannot follow them. `GET /sd/engines` answers the list
Prometheus expects (`[{"targets": ["host:port"], "labels": {...}}]`), built from the
status document the daemon already serves, so discovery and `/status` never disagree.

Only engines that serve HTTP are listed: single-node replicas and the leader of a
multi-node one (a Ray replica's followers run Ray workers; an `mp` replica's followers run
headless, and vLLM serves `/metrics` on the leader only). A replica is listed from the
moment the daemon starts its engine until it is stopped, so a crash-looping engine shows
up as `up == 0` instead of vanishing from Prometheus.

Labels stay bounded like the daemon's own: `deployment` (desired state), `replica`
(index), `node`, `role` (member role, always `engine` here) and `spec_hash` (changes only
when the deployment's engine-visible spec does).
"""

from __future__ import annotations

from typing import Any

from schemas.status import NodeStatus

SD_PATH = "/sd/engines"

# states in which the node runs (or keeps restarting) an engine for the replica
_SCRAPED_STATES = frozenset({"Starting", "Ready", "Draining", "Failed", "CrashLoopBackOff"})
_SERVING_ROLES = frozenset({"single", "leader"})


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def engine_targets(status: NodeStatus) -> list[dict[str, Any]]:
    """The `http_sd_configs` target groups of this node's engines, one group per engine."""
    node = status.node
    nodes = status.cluster.nodes if status.cluster is not None else []
    address = next((n.address for n in nodes if n.name == node), None)
    if address is None:
        return []  # no desired state yet, or this node is not in it: nothing runs here
    groups = []
    for rep in sorted(status.replicas, key=lambda r: (r.deployment, r.index)):
        if node not in rep.nodes or rep.role not in _SERVING_ROLES:
            continue
        if rep.state not in _SCRAPED_STATES or not rep.port:
            continue
        groups.append({
            "targets": [f"{_host(address)}:{rep.port}"],
            "labels": {
                "deployment": rep.deployment,
                "replica": str(rep.index),
                "node": node,
                "role": "engine",
                "spec_hash": rep.spec_hash,
            },
        })
    return groups
