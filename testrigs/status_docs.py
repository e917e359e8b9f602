"""Whole NodeStatus documents from the few fields a test cares about.

Peers parse /status with `NodeStatus.model_validate`, so a test that feeds them a
document must give a whole one; this fills every field the test leaves out with a
neutral value (no desired state, no GPUs, no tick) and validates the result.
"""

from __future__ import annotations

from typing import Any

from schemas.status import NodeStatus

_T0 = "2026-01-01T00:00:00Z"

_REPLICA: dict[str, Any] = {
    "deployment": "r1", "index": 0, "state": "Pending", "reason": "", "role": "single",
    "nodes": [], "gpus": [], "port": None, "specHash": "",
}
_MEMBER: dict[str, Any] = {
    "role": "engine", "specHash": "", "running": True, "health": "starting", "pid": 1,
    "gpus": [], "port": 1,
}


def status_dict(node: str, replicas: list[dict[str, Any]] | None = None,
                **fields: Any) -> dict[str, Any]:
    """A /status document as JSON (camelCase), with `replicas` completed field by field."""
    reps = []
    for r in replicas or []:
        rep = {**_REPLICA, **r}
        if rep.get("members") is not None:
            rep["members"] = [{**_MEMBER, **m} for m in rep["members"]]
        reps.append(rep)
    doc: dict[str, Any] = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "NodeStatus",
        "node": node,
        "observedAt": _T0,
        "daemon": {"pid": 1, "startedAt": _T0, "uptimeSeconds": 0, "configReloadedAt": None},
        "source": {"url": "", "branch": "main", "path": ".", "lastFetchSuccessAt": None,
                   "failure": None},
        "revisions": {"fetched": None, "attempted": None, "applied": None, "lastGood": None},
        "conditions": [
            {"type": t, "status": "Unknown", "reason": "Progressing", "message": "",
             "lastTransitionTime": _T0}
            for t in ("Ready", "Reconciling", "Stalled")
        ],
        "deployments": [],
        "replicas": reps,
        "gpus": {
            "declared": None,
            "observed": {"count": 0, "available": False, "simulated": True, "error": "",
                         "driverVersion": "", "cudaVersion": "", "devices": []},
            "counts": {"assigned": 0, "free": 0, "foreign": 0, "missing": 0, "unhealthy": 0},
            "simulated": True,
            "foreignPids": [],
        },
        "cluster": None,
        "notes": [],
        "lastTick": None,
        "lastErrors": [],
    }
    doc.update(fields)
    return doc


def node_status(node: str, replicas: list[dict[str, Any]] | None = None,
                **fields: Any) -> NodeStatus:
    return NodeStatus.model_validate(status_dict(node, replicas, **fields))
